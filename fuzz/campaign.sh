#!/usr/bin/env bash
# A long fuzzing campaign, one target after another, one libFuzzer process at a time, at the
# lowest CPU priority. Usage: fuzz/campaign.sh SECONDS [TARGET...] (default: every target).
# Logs go to fuzz/logs/<target>.log (gitignored); new inputs grow fuzz/corpus/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p logs
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    echo "== $t: up to ${secs}s or 10M runs ($(date -u +%FT%TZ))"
    nice -n 19 cargo +nightly fuzz run --sanitizer none --debug-assertions "$t" \
        "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -runs=10000000 -timeout=5 -rss_limit_mb=2048 \
        -print_final_stats=1 >"logs/$t.log" 2>&1 || { echo "   FAILED: see fuzz/logs/$t.log"; exit 1; }
    grep -E '^Done|stat::number_of_executed_units|stat::peak_rss_mb' "logs/$t.log" | sed 's/^/   /'
done
