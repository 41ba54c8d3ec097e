"""What llama.cpp's q8_0 KV cache costs on the real 0.5B over the 512-token KL text
(fixtures/real/ppl_ids.json[:512]): the reference for tests/kv_q8.rs's bound.

Run (llama-cpp-python 0.3.36, see scripts/fixtures/fast_path_llamacpp.py; numpy):
    target/release/qwen2 logits --exact --all --ids <the 512 ids> --out /tmp/exact.npy
    /work/llama-venv/bin/python bench/kv_q8_llamacpp.py /tmp/exact.npy
Prints the numbers (recorded in bench/recorded/kv_q8_llamacpp.txt) and writes them to
fixtures/real/kv_q8_llamacpp.json, which tests/kv_q8.rs reads as its bar.
"""
import json
import sys
from pathlib import Path

import numpy as np
import llama_cpp
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parents[1]
MODEL = Path.home() / ".cache/qwen2/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
ids = json.load(open(ROOT / "fixtures/real/ppl_ids.json"))["ids"][:512]


def log_softmax(x):
    m = x.max(1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(1, keepdims=True))


def logits(**kv):
    llm = Llama(model_path=str(MODEL), n_ctx=512, n_batch=512, logits_all=True, n_threads=2,
                flash_attn=True, verbose=False, **kv)
    llm.eval(ids)
    return np.array(llm.scores[:512], dtype=np.float64)


def kl_top1(ref, ours):
    lr, lo = log_softmax(ref), log_softmax(ours)
    return float((np.exp(lr) * (lr - lo)).sum(1).mean()), float((ref.argmax(1) == ours.argmax(1)).mean())


f16 = logits()
q8 = logits(type_k=llama_cpp.GGML_TYPE_Q8_0, type_v=llama_cpp.GGML_TYPE_Q8_0)
ex = np.load(sys.argv[1]).astype(np.float64)
out = {"n_tokens": 512, "llama_cpp_python": llama_cpp.__version__, "flash_attn": True}
for name, ref, ours in [("f16_kv_vs_exact", ex, f16), ("q8_0_kv_vs_exact", ex, q8),
                        ("q8_0_kv_vs_f16_kv", f16, q8)]:
    # All 512 positions (our prefill test) and the first 192 (our decode test).
    for n, key in [(512, name), (192, name + "_first192")]:
        kl, top1 = kl_top1(ref[:n], ours[:n])
        out[key] = {"kl_mean": kl, "top1": top1}
        print("llama.cpp %-27s KL %.6f top-1 %.4f" % (key, kl, top1))
json.dump(out, open(ROOT / "fixtures/real/kv_q8_llamacpp.json", "w"), indent=1)
