#!/usr/bin/env bash
# Refreshes the committed seeds of TARGET from its grown corpus: libFuzzer's -merge=1 keeps a
# minimal set of inputs covering every feature, and the 30 largest of those become
# fuzz/seeds/TARGET/gen-* (hand-made and regress-* seeds are kept). Usage: fuzz/pick_seeds.sh TARGET
set -euo pipefail
cd "$(dirname "$0")"
t="$1"
bin="target/x86_64-unknown-linux-gnu/release/$t"
tmp="$(mktemp -d)"
log="$(mktemp)"
trap 'rm -rf "$tmp" "$log"' EXIT
nice -n 19 "$bin" -merge=1 "$tmp" "corpus/$t" "seeds/$t" >"$log" 2>&1 || { tail "$log"; exit 1; }
rm -f "seeds/$t"/gen-*
mapfile -t merged < <(ls -S "$tmp")
for f in "${merged[@]:0:30}"; do cp "$tmp/$f" "seeds/$t/gen-$f"; done
echo "$t: ${#merged[@]} inputs in the merged set, $(ls "seeds/$t" | wc -l) seeds now"
