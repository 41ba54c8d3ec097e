#!/usr/bin/env python3
"""End-to-end check of `qwen2 quantize` on the real default model against llama.cpp.

Run (after `cargo build --release -p qwen2-cli`):
  /work/venv/bin/python bench/check_quantize.py [--keep DIR]
Needs /work/venv (gguf 0.19, numpy) and /work/llama-venv (llama-cpp-python 0.3.36); writes
~2.5 GB of temporary GGUFs. Output recorded in bench/recorded/check_quantize.txt.

1. ours:      original Q4_K_M GGUF -> F32 GGUF (its dequantized weights)
2. ours vs llama.cpp (`llama_model_quantize`, no imatrix): that F32 GGUF -> Q8_0, Q4_K_M;
   per-tensor types and bytes must be identical
3. also the direct requantization original Q4_K_M -> Q4_K_M (llama.cpp with allow_requantize)
4. our engine: KL divergence / top-1 / delta-ppl of each output vs the original GGUF
   (`qwen2 perplexity --kl-base`, fixtures/text/ppl.txt, ctx 512)
5. llama-cpp-python loads our Q4_K_M output and greedy-decodes; compared with the same on
   llama.cpp's own (direct) Q4_K_M output
Options: --model GGUF (e.g. the 1.5B, whose 1536-wide rows take real k-quants everywhere),
--types Q4_K_M,Q6_K,..., --bytes-only (skip 4 and 5).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
QWEN2 = os.path.join(ROOT, "target", "release", "qwen2")
ORIG = "/root/.cache/qwen2/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
TEXT = os.path.join(ROOT, "fixtures", "text", "ppl.txt")
LLAMA_PY = "/work/llama-venv/bin/python"
FTYPE = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K_S": 14, "Q4_K_M": 15,
         "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18}
KL_TYPES = ("Q8_0", "Q4_K_M")

LLAMA_QUANTIZE = r"""
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = int(sys.argv[3]); p.nthread = 2; p.allow_requantize = True
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""

LLAMA_GREEDY = r"""
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False, logits_all=False)
prompt = "def fibonacci(n):\n    "
out = llm.create_completion(prompt, max_tokens=32, temperature=0.0, top_k=1)
print(repr(out["choices"][0]["text"]))
"""


def sh(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


def compare(ours, theirs):
    a, b = GGUFReader(ours), GGUFReader(theirs)
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    assert set(ta) == set(tb), (set(ta) ^ set(tb))
    types_diff = [n for n in ta if ta[n].tensor_type != tb[n].tensor_type]
    bytes_diff = [n for n in ta if not np.array_equal(np.asarray(ta[n].data).view(np.uint8).ravel(),
                                                       np.asarray(tb[n].data).view(np.uint8).ravel())]
    mix = {}
    for t in ta.values():
        mix[t.tensor_type.name] = mix.get(t.tensor_type.name, 0) + 1
    return len(ta), types_diff, bytes_diff, mix


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep")
    ap.add_argument("--model", default=ORIG, help="source GGUF (default: the 0.5B default model)")
    ap.add_argument("--types", default=",".join(FTYPE), help="comma-separated file types")
    ap.add_argument("--bytes-only", action="store_true", help="skip KL and llama-cpp-python runs")
    args = ap.parse_args()
    orig = args.model
    types = args.types.split(",")
    tmp = args.keep or tempfile.mkdtemp(prefix="qwen2-checkq-")
    os.makedirs(tmp, exist_ok=True)
    p = lambda n: os.path.join(tmp, n)  # noqa: E731
    print(f"original: {orig}")
    sh([QWEN2, "quantize", orig, p("f32.gguf"), "--type", "F32", "--force"])
    outputs = {}
    for name in types:
        ft = FTYPE[name]
        sh([QWEN2, "quantize", p("f32.gguf"), p(f"ours-{name}.gguf"), "--type", name, "--force"])
        sh([LLAMA_PY, "-c", LLAMA_QUANTIZE, p("f32.gguf"), p(f"llama-{name}.gguf"), str(ft)])
        n, td, bd, mix = compare(p(f"ours-{name}.gguf"), p(f"llama-{name}.gguf"))
        print(f"F32 -> {name}: {n} tensors {mix}; type differences vs llama.cpp: {len(td)}; "
              f"byte differences: {len(bd)} {bd[:5]}")
        if name in KL_TYPES:
            outputs[f"{name} (from dequantized f32)"] = p(f"ours-{name}.gguf")
        else:
            os.remove(p(f"ours-{name}.gguf"))
        os.remove(p(f"llama-{name}.gguf"))
    if args.bytes_only:
        outputs = {}
    sh([QWEN2, "quantize", orig, p("ours-direct.gguf"), "--type", "Q4_K_M", "--force"])
    sh([LLAMA_PY, "-c", LLAMA_QUANTIZE, orig, p("llama-direct.gguf"), "15"])
    n, td, bd, mix = compare(p("ours-direct.gguf"), p("llama-direct.gguf"))
    print(f"Q4_K_M -> Q4_K_M (direct requantize): {n} tensors {mix}; type differences vs llama.cpp: "
          f"{len(td)}; byte differences: {len(bd)}")
    _, td, _, _ = compare(p("ours-direct.gguf"), orig)
    print(f"  vs the published file: {len(td)} tensors of another type (it was made by an older "
          f"llama.cpp that counted layers in file order): {td[:4]}...")

    for label, path in outputs.items():
        r = sh([QWEN2, "perplexity", "-m", path, "--kl-base", orig, "-f", TEXT, "--ctx", "512"])
        print(f"--- our engine: {label} vs original Q4_K_M ---")
        print(r.stdout.strip())

    for label, path in (("ours Q4_K_M", p("ours-Q4_K_M.gguf")), ("llama.cpp's Q4_K_M", p("llama-direct.gguf"))):
        if args.bytes_only or not os.path.exists(path):
            continue
        r = sh([LLAMA_PY, "-c", LLAMA_GREEDY, path])
        print(f"llama-cpp-python greedy on {label}: {r.stdout.strip()}")
    if not args.keep:
        for f in os.listdir(tmp):
            os.remove(os.path.join(tmp, f))
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
