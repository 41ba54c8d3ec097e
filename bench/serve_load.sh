#!/usr/bin/env bash
# Long-form load test of `qwen2 serve`: builds, starts the server (prefix cache off, so "KV back
# to 0" is exact), runs examples/load.rs against it (32 streaming clients for 2 minutes by
# default; ~10% hang up mid-stream, ~10% send garbage), then stops the server with SIGTERM.
# Exits non-zero if a well-formed request failed, the server did not return to idle with no KV
# held, its peak memory grew past the limit, or it did not shut down cleanly.
#
#   bench/serve_load.sh [--clients 32] [--secs 120] [--parallel 4] [--rss-growth-limit-mb 1024]
#   QWEN2_MODEL=path.gguf bench/serve_load.sh --secs 15      # quick check
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=32 SECS=120 PARALLEL=4 LIMIT=1024 PORT=${PORT:-0}
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) CLIENTS=$2; shift 2 ;;
    --secs) SECS=$2; shift 2 ;;
    --parallel) PARALLEL=$2; shift 2 ;;
    --rss-growth-limit-mb) LIMIT=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
MODEL=${QWEN2_MODEL:-$HOME/.cache/qwen2/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release -q -p qwen2-cli -p qwen2-server --example load
LOG=$(mktemp -t qwen2-serve-load.XXXXXX)
"$TARGET/release/qwen2" serve -m "$MODEL" --port "$PORT" --parallel "$PARALLEL" --ctx 2048 \
  --queue $((CLIENTS * 2)) --prefix-cache 0 2>"$LOG" &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; }
trap cleanup EXIT

# The server prints "serving ... at http://HOST:PORT/v1" once it listens.
ADDR=""
for _ in $(seq 1 600); do
  ADDR=$(sed -n 's|.* at http://\([^/]*\)/v1.*|\1|p' "$LOG" | head -1)
  [ -n "$ADDR" ] && break
  kill -0 "$PID" 2>/dev/null || { cat "$LOG" >&2; echo "server exited" >&2; exit 1; }
  sleep 0.2
done
[ -n "$ADDR" ] || { cat "$LOG" >&2; echo "server did not start" >&2; exit 1; }

STATUS=0
"$TARGET/release/examples/load" --addr "$ADDR" --pid "$PID" --clients "$CLIENTS" \
  --secs "$SECS" --rss-growth-limit-mb "$LIMIT" || STATUS=$?

kill -TERM "$PID"
if ! wait "$PID"; then
  echo "- FAIL: the server did not exit cleanly on SIGTERM" >&2
  STATUS=1
fi
trap - EXIT
echo "- server log: $LOG"
exit $STATUS
