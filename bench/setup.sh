#!/usr/bin/env bash
# Create bench/.venv with llama-cpp-python (llama.cpp built from source with native CPU
# flags, clang-19), numpy and gguf. Idempotent: re-running does nothing if all is in place.
#
#   bench/setup.sh            # create / complete the venv
#   REBUILD=1 bench/setup.sh  # force a fresh source build of llama.cpp (ignores pip's wheel cache)
#
# Why clang-19: gcc 12 miscompiles llama.cpp's AMX code paths (GGML_NATIVE enables whatever the
# CPU has). A fresh build takes ~11 min on 2 cores.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PY="${PYTHON:-python3}"

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
apt_install() {  # quiet; refresh the package lists only if the first try fails
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null 2>&1 || {
        $SUDO apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
    }
}
if ! command -v clang-19 >/dev/null || ! command -v clang++-19 >/dev/null; then
    echo "[setup] apt-get install clang-19" >&2
    apt_install clang-19
fi
# llama-cpp-python's build backend (scikit-build-core) can fetch cmake from PyPI, but a system
# one is faster and more predictable. The STREAM probe needs a C compiler with OpenMP.
command -v cmake >/dev/null || { echo "[setup] apt-get install cmake" >&2; apt_install cmake || true; }
command -v cc >/dev/null || { echo "[setup] apt-get install gcc" >&2; apt_install gcc; }

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

have() { "$VPY" - "$@" <<'PYEOF'
import sys, importlib.metadata as md
name, want = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
try:
    v = md.version(name)
except md.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if want is None or v == want else 1)
PYEOF
}

have numpy && have gguf || "$VPY" -m pip install -q numpy gguf

if [ "${REBUILD:-0}" = 1 ] || ! have llama_cpp_python "$LLAMA_CPP_PYTHON_VERSION"; then
    echo "[setup] building llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION from source (clang-19, GGML_NATIVE=ON)" >&2
    EXTRA=()
    [ "${REBUILD:-0}" = 1 ] && EXTRA+=(--no-cache-dir --force-reinstall --no-deps)
    CMAKE_ARGS="-DCMAKE_C_COMPILER=clang-19 -DCMAKE_CXX_COMPILER=clang++-19 -DGGML_NATIVE=ON" \
    CC=clang-19 CXX=clang++-19 \
        "$VPY" -m pip install -v --no-binary llama-cpp-python "${EXTRA[@]}" \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" > "$HERE/.venv/llama-build.log" 2>&1 \
        || { tail -50 "$HERE/.venv/llama-build.log" >&2; exit 1; }
fi

"$VPY" -c "import llama_cpp, numpy, gguf; print('[setup] ok: llama_cpp', llama_cpp.__version__, '| numpy', numpy.__version__, '| system_info:', llama_cpp.llama_print_system_info().decode())"
