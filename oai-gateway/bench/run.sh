#!/usr/bin/env bash
# The gateway's benchmark (oai-gateway/bench/README.md): in one run, against one mock upstream,
# calls sent directly to the mock, through oai-gateway, and through LiteLLM's proxy (if
# installed): latency at a fixed open-loop rate, and the maximum requests per second.
#
#   oai-gateway/bench/run.sh
#
# Environment (defaults in brackets):
#   ROUNDS [3]          rounds; each runs every target, in a rotated order; medians reported
#   RATE [1000]         the steady open-loop rate, requests/s
#   LOW_RATE [50]       a second rate, one that LiteLLM's proxy can sustain here
#   CONCURRENCY ["32 128"]  closed-loop concurrencies for the maximum rps (space-separated)
#   DURATION [10]       seconds measured per test, after WARMUP [2] seconds not counted
#   VENV [/tmp/oai-gateway-bench-venv]  a Python venv with `litellm[proxy]==1.100.0`;
#                       without it the LiteLLM rows are skipped
#   TARGETS ["direct gateway litellm"]
#   GATEWAY_RUST_LOG [info]  the gateway's RUST_LOG (info: its default, one access line per call)
#   OUT [target/oai-gateway-bench/DATE]  where results, logs and the binaries go
#   BIN_DIR             use these oai-gateway, mock-server and load-driver binaries; no build
#
# Nothing is written into the source tree: results go to OUT (under target/ by default).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=$ROOT/oai-gateway/bench
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-1000}
LOW_RATE=${LOW_RATE:-50}
CONCURRENCY=${CONCURRENCY:-32 128}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
VENV=${VENV:-/tmp/oai-gateway-bench-venv}
TARGETS=${TARGETS:-direct gateway litellm}
GATEWAY_RUST_LOG=${GATEWAY_RUST_LOG:-info}
OUT=${OUT:-$ROOT/target/oai-gateway-bench/$(date +%Y%m%d-%H%M%S)}
KEY=sk-proj-M0ckTestKey0penAiShape0123456789abcd # oai_resilience::mock::TEST_KEY, not a real key
mkdir -p "$OUT"

if [ -z "${BIN_DIR:-}" ]; then
  (cd "$ROOT" && cargo build --release -p oai-gateway --bin oai-gateway \
    --example mock-server --example load-driver)
  TD=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  # Copies: a concurrent build must not replace a binary during the run.
  BIN_DIR=$OUT/bin
  mkdir -p "$BIN_DIR"
  cp "$TD/release/oai-gateway" "$TD/release/examples/mock-server" \
    "$TD/release/examples/load-driver" "$BIN_DIR/"
fi

PIDS=()
cleanup() {
  exec 3>&- 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_line() { # FILE PATTERN: waits up to 60 s for a line matching PATTERN, prints it
  for _ in $(seq 600); do
    if grep -m1 -E "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2
  return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The mock upstream: no rate limits, no faults, no latency; one worker thread. Its stdin (fd 3)
# stays open for the run; it exits when the run closes it.
mkfifo "$OUT/mock.in"
"$BIN_DIR/mock-server" --scenario clean --threads 1 <"$OUT/mock.in" >"$OUT/mock.out" 2>"$OUT/mock.err" &
PIDS+=($!)
exec 3>"$OUT/mock.in"
MOCK=$(wait_line "$OUT/mock.out" '^listening ' | awk '{print $2}')

# The gateway in front of it, with its defaults (callers' own keys, RUST_LOG=info).
RUST_LOG=$GATEWAY_RUST_LOG "$BIN_DIR/oai-gateway" --listen 127.0.0.1:0 --upstream "$MOCK/v1" \
  >"$OUT/gateway.out" 2>"$OUT/gateway.err" &
PIDS+=($!)
GATEWAY=$(wait_line "$OUT/gateway.out" 'listening on' | sed -E 's#.*listening on (http://[^ ]+)/v1.*#\1#')

declare -A URL=([direct]="$MOCK" [gateway]="$GATEWAY")

if [[ " $TARGETS " == *" litellm "* ]]; then
  if [ -x "$VENV/bin/litellm" ]; then
    PORT=$(free_port)
    cat >"$OUT/litellm.yaml" <<EOF
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: $MOCK/v1
      api_key: $KEY
EOF
    LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/litellm" --config "$OUT/litellm.yaml" \
      --host 127.0.0.1 --port "$PORT" >"$OUT/litellm.log" 2>&1 &
    PIDS+=($!)
    wait_line "$OUT/litellm.log" 'Uvicorn running' >/dev/null
    URL[litellm]="http://127.0.0.1:$PORT"
  else
    echo "no $VENV/bin/litellm: LiteLLM rows skipped (see oai-gateway/bench/README.md)" >&2
    TARGETS=${TARGETS/litellm/}
  fi
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- oai-gateway/src oai-resilience/src 2>/dev/null || echo ' (with uncommitted changes in oai-gateway/src or oai-resilience/src)')"
  echo "cpus: $(nproc); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "mock: $MOCK; gateway: $GATEWAY; litellm: ${URL[litellm]:-none}"
} | tee "$OUT/machine.txt"

drive() { # TARGET ROUND MODE VALUE
  local target=$1 round=$2 mode=$3 value=$4
  "$BIN_DIR/load-driver" --url "${URL[$target]}/v1/chat/completions" --key "$KEY" \
    "--$mode" "$value" --duration "$DURATION" --warmup "$WARMUP" \
    --label "{\"target\":\"$target\",\"round\":$round}" | tee -a "$OUT/results.jsonl"
}

settle() { # TARGET: waits (up to 120 s) until a single call answers within 0.2 s, so that a
  # proxy still working off the backlog of an overload does not slow the next test
  local t0=$SECONDS took
  sleep 1
  while ((SECONDS - t0 < 120)); do
    took=$(curl -s -o /dev/null -m 5 -w '%{time_total}' "${URL[$1]}/v1/chat/completions" \
      -H 'content-type: application/json' -H "authorization: Bearer $KEY" \
      -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}' || echo 9)
    if python3 -c "import sys; sys.exit(0 if float('$took') < 0.2 else 1)"; then return 0; fi
    sleep 1
  done
  echo "$1 did not settle within 120 s" >&2
}

read -r -a order <<<"$TARGETS"
for round in $(seq "$ROUNDS"); do
  for t in "${order[@]}"; do
    # The overload (a proxy that cannot keep up with RATE) last, then let it settle.
    drive "$t" "$round" rate "$LOW_RATE"
    settle "$t"
    for c in $CONCURRENCY; do
      drive "$t" "$round" concurrency "$c"
      settle "$t"
    done
    drive "$t" "$round" rate "$RATE"
    settle "$t"
  done
  order=("${order[@]:1}" "${order[0]}") # rotate: no target always runs first
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"

python3 "$BENCH/summarize.py" "$OUT" | tee "$OUT/summary.md"
