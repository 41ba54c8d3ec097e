#!/usr/bin/env bash
# One command that regenerates the whole comparison table (and rewrites it into BENCHMARKS.md):
#
#   bench/compare.sh                      # all configurations of issue 4, 3 rounds x 3 reps
#   ROUNDS=2 REPS=2 bench/compare.sh      # quicker
#   bench/compare.sh --config 0.5B:2:512:128 --no-md   # one configuration, print only
#
# It sets up what is missing first: bench/.venv (bench/setup.sh), the 1.5B GGUF
# (bench/fetch_1_5b.sh), the synthetic 7B-shape GGUF (bench/make_synthetic_7b.py), and builds
# target/release/qwen2 if absent. Env: QWEN2_BIN (our binary), LLAMA_PY (a python that has
# llama_cpp, instead of bench/.venv), ROUNDS, REPS.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
if [ -z "${LLAMA_PY:-}" ]; then
    [ -x bench/.venv/bin/python ] && bench/.venv/bin/python -c "import llama_cpp, gguf, numpy" 2>/dev/null \
        || bench/setup.sh
    PY=bench/.venv/bin/python
else
    PY="$LLAMA_PY"
fi
bench/fetch_1_5b.sh >&2
"$PY" bench/make_synthetic_7b.py >&2
QWEN2_BIN="${QWEN2_BIN:-target/release/qwen2}"
[ -x "$QWEN2_BIN" ] || cargo build --release -p qwen2-cli
MD=(--update-md BENCHMARKS.md)
args=()
for x in "$@"; do
    if [ "$x" = "--no-md" ]; then MD=(); else args+=("$x"); fi
done
exec "$PY" bench/compare.py --qwen2 "$QWEN2_BIN" --python "$PY" "${MD[@]}" "${args[@]}"
