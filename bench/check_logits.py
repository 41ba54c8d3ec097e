#!/usr/bin/env python3
"""Sanity check that both engines read a GGUF the same way: last-position logits for a few token
ids from `qwen2 logits` and from llama.cpp; prints finiteness, top-1 agreement and correlation.

  check_logits.py -m MODEL [--qwen2 target/release/qwen2] [--ids 1,2,3,100,2000] [-t 2]
"""
import argparse, ctypes, os, subprocess, sys, tempfile
import numpy as np
import llama_cpp as L

ap = argparse.ArgumentParser()
ap.add_argument("-m", "--model", required=True)
ap.add_argument("--qwen2", default=os.environ.get("QWEN2_BIN", "target/release/qwen2"))
ap.add_argument("--ids", default="1,2,3,100,2000")
ap.add_argument("-t", "--threads", type=int, default=2)
a = ap.parse_args()
ids = [int(x) for x in a.ids.split(",")]

with tempfile.TemporaryDirectory() as d:
    out = os.path.join(d, "l.npy")
    subprocess.run([a.qwen2, "logits", "-m", a.model, "-t", str(a.threads), "--ids", a.ids, "--out", out],
                   check=True, stderr=subprocess.DEVNULL)
    ours = np.load(out).reshape(-1)

@L.llama_log_callback
def _quiet(level, text, ud):
    pass
L.llama_log_set(_quiet, ctypes.c_void_p(0))
L.llama_backend_init()
model = L.llama_model_load_from_file(a.model.encode(), L.llama_model_default_params())
cp = L.llama_context_default_params()
cp.n_ctx = 64; cp.n_batch = 64; cp.n_ubatch = 64; cp.n_threads = cp.n_threads_batch = a.threads
ctx = L.llama_init_from_model(model, cp)
arr = (L.llama_token * len(ids))(*ids)
assert L.llama_decode(ctx, L.llama_batch_get_one(arr, len(ids))) == 0
n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
ref = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()

print(f"{os.path.basename(a.model)}: vocab {n_vocab}")
print(f"  finite: ours {np.isfinite(ours).all()}  llama.cpp {np.isfinite(ref).all()}")
print(f"  top-1: ours {ours.argmax()} llama.cpp {ref.argmax()}  "
      f"top-5 overlap {len(set(np.argsort(-ours)[:5]) & set(np.argsort(-ref)[:5]))}/5")
print(f"  corr {np.corrcoef(ours, ref)[0, 1]:.5f}  max|diff| {np.abs(ours - ref).max():.3g}  std ours {ours.std():.3g} ref {ref.std():.3g}")
