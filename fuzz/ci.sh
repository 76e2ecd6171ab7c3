#!/usr/bin/env bash
# CI smoke fuzzing: builds every fuzz target with libFuzzer's coverage instrumentation and runs
# each one briefly over its committed seeds (fuzz/seeds/<target>/). Fails on any crash,
# panic (a broken invariant), hang (> 5 s per input) or out-of-memory (> 2 GiB).
#
# It builds with plain `cargo build` and the RUSTFLAGS that `cargo fuzz build --sanitizer none
# --debug-assertions` uses, so CI needs neither cargo-fuzz (a ~4 minute install on this
# machine) nor nightly: the flags are stable, and nightly is used only when installed.
#
# Environment: FUZZ_RUNS (default 20000) and FUZZ_SECONDS (default 20) bound each target's
# run, whichever comes first; FUZZ_TOOLCHAIN picks a toolchain (default: nightly if installed).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never

runs="${FUZZ_RUNS:-20000}"
secs="${FUZZ_SECONDS:-20}"
toolchain=()
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
    toolchain=(+"$FUZZ_TOOLCHAIN")
elif rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
fi

export CARGO_TARGET_DIR="$PWD/target/ci"
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-sanitizer-coverage-stack-depth \
 -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
 -Cdebug-assertions -Coverflow-checks --cfg fuzzing"

echo "== fuzz: building targets (cargo ${toolchain[*]:-(default toolchain)})"
start=$(date +%s)
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros (as cargo fuzz does).
host="$(rustc "${toolchain[@]}" -vV | sed -n 's/^host: //p')"
cargo "${toolchain[@]}" build --release --bins --target "$host"
echo "   built in $(( $(date +%s) - start ))s"

mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | tail -n +2)
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "artifacts/$t"
    echo "== fuzz: $t (seeds: $(find "seeds/$t" -type f 2>/dev/null | wc -l), up to $runs runs / ${secs}s)"
    # New inputs go to a scratch dir: the committed seeds are never modified.
    if ! "$CARGO_TARGET_DIR/$host/release/$t" "$scratch/$t" "seeds/$t" \
        -runs="$runs" -max_total_time="$secs" -timeout=5 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$scratch/$t.log" 2>&1; then
        tail -n 60 "$scratch/$t.log"
        echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/"
        exit 1
    fi
    grep -E '^Done|stat::number_of_executed_units' "$scratch/$t.log" | sed 's/^/   /'
done
echo "fuzz: ${#targets[@]} targets passed"
