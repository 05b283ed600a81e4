#!/usr/bin/env bash
# Regenerate every number, table and the plot in docs/benchmarks.md, in one go:
#   1. quillman bench: concurrency sweep (default 1,2,4), streaming and the sequential baseline
#   2. benchmarks/engines.py: each engine plain vs behind its deployment
#   3. the turn-taking set: replayed in audio time (quillman bench turns) and live (quillman_bench.turns)
#   (the MCP overhead table is by hand: python benchmarks/mcp_overhead.py --calls 50)
#   4. benchmarks/update_docs.py: fills the generated blocks of docs/benchmarks.md
# Outputs: docs/benchmarks/{bench.json,bench.md,latency.png,engines.json,engines.md,turns*.{json,md},turn-replay.{json,md}}.
#
# Environment:
#   QUILLMAN_URL=ws://127.0.0.1:8000/v1/realtime   target a running server (default: start one
#                                                  with `serve run $CONFIG` and stop it after)
#   CONFIG=serve_config.yaml  PORT=8000  CONCURRENCY=1,2,4  TURNS=10  ROUNDS=5  REPEATS=5
#   NOTE="quiet machine"      a remark printed beside the date in the doc
# On a 2-core machine the whole run takes about 12-15 minutes. Run it on a quiet machine:
# every other process on the cores shows up in the latencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=docs/benchmarks
CONFIG=${CONFIG:-serve_config.yaml}
mkdir -p "$OUT"
export RAY_USAGE_STATS_ENABLED=0

if [[ -n "${QUILLMAN_URL:-}" ]]; then
  target=(--url "$QUILLMAN_URL")
else
  target=(--start --config "$CONFIG" --port "${PORT:-8000}")
fi

echo "== quillman bench" >&2
status=0
"$PY" -m quillman.cli bench "${target[@]}" --concurrency "${CONCURRENCY:-1,2,4}" --turns "${TURNS:-10}" \
  --baseline --rounds "${ROUNDS:-5}" --json "$OUT/bench.json" --markdown --plot "$OUT/latency.png" > "$OUT/bench.md" || status=$?
if [[ $status -ne 0 && $status -ne 1 ]]; then  # 1 = some turns were lost: still reported
  echo "quillman bench failed ($status)" >&2
  exit "$status"
fi

echo "== engine micro-benchmarks" >&2
"$PY" benchmarks/engines.py --config "$CONFIG" --repeats "${REPEATS:-5}" \
  --json "$OUT/engines.json" --markdown > "$OUT/engines.md"

echo "== turn taking: labeled set, semantic_vad vs server_vad (docs/benchmarks.md#turn-taking)" >&2
"$PY" -m quillman.cli bench turns --config "$CONFIG" --markdown --json "$OUT/turn-replay.json" > "$OUT/turn-replay.md"
"$PY" -m quillman_bench.turns "${target[@]}" --markdown --json "$OUT/turns.json" > "$OUT/turns.md"

echo "== docs/benchmarks.md" >&2
"$PY" benchmarks/update_docs.py --bench "$OUT/bench.json" --engines "$OUT/engines.json" --note "${NOTE:-}"
exit "$status"
