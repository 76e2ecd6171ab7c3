#!/usr/bin/env bash
# The loadtest's scenarios (burst, flaky, quota, outage) through oai-gateway with the official
# OpenAI Python SDK as the client: see scenarios.py and oai-gateway/bench/README.md.
#
#   oai-gateway/bench/run-scenarios.sh [--scenario burst,flaky] [--n N] [--concurrency C]
#
# Environment: VENV [/tmp/oai-gateway-bench-venv] (created with `pip install openai` if it has
# no openai), OUT [target/oai-gateway-scenarios/DATE], BIN_DIR (skip the build).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${VENV:-/tmp/oai-gateway-bench-venv}
OUT=${OUT:-$ROOT/target/oai-gateway-scenarios/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
if [ -z "${BIN_DIR:-}" ]; then
  (cd "$ROOT" && cargo build --release -p oai-gateway --bin oai-gateway --example mock-server)
  TD=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  BIN_DIR=$OUT/bin
  mkdir -p "$BIN_DIR"
  cp "$TD/release/oai-gateway" "$TD/release/examples/mock-server" "$BIN_DIR/"
fi
if ! "$VENV/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet openai
fi
"$VENV/bin/python" "$ROOT/oai-gateway/bench/scenarios.py" --bin-dir "$BIN_DIR" --out "$OUT" "$@"
