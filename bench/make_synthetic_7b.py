#!/usr/bin/env python3
"""Write a synthetic Q4_K_M GGUF with the exact Qwen2-7B shape and random weights.

28 layers, hidden 3584, 28 heads / 4 KV heads (head_dim 128), FFN 18944, vocab 152064,
rope_theta 1e6, rms eps 1e-6, untied output. Tensor types follow llama.cpp's Q4_K_M recipe
(llama_tensor_get_type) for this shape: token_embd Q4_K; attn_q/k/output, ffn_gate/up Q4_K;
attn_v and ffn_down Q6_K on the "use_more_bits" layers (first 1/8, last 1/8, every third in
between) else Q4_K; output Q6_K; norms and biases F32.

Quantized blocks are random bytes, but their f16 super-block scales (Q4_K d/dmin, Q6_K d) are
overwritten with sane values so every dequantized weight is finite (|w| <~ 1). The tokenizer
metadata is copied from the 0.5B GGUF (tokens / token types padded to the vocab with [PADn]).

Usage: make_synthetic_7b.py [--src 0.5B.gguf] [--out ~/.cache/qwen2/qwen2-7b-shape-synthetic-q4_k_m.gguf]
Takes ~1-2 min, writes ~4.4 GB. Idempotent unless --force.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFReader, GGUFValueType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES

CACHE = Path(os.environ.get("QWEN2_CACHE", Path.home() / ".cache" / "qwen2"))
SRC = CACHE / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
OUT = CACHE / "qwen2-7b-shape-synthetic-q4_k_m.gguf"

N_LAYER, N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM = 28, 3584, 28, 4, 128
N_FF, N_VOCAB, N_CTX = 18944, 152064, 32768
ROPE_THETA, RMS_EPS = 1e6, 1e-6
KV_DIM = N_HEAD_KV * HEAD_DIM


def use_more_bits(i: int, n: int) -> bool:  # llama.cpp src/llama-quant.cpp
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def quant_tensor(rng, qtype, rows, cols):
    """Random blocks for a [rows x cols] matrix (GGUF ne = [cols, rows]), with sane scales."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    assert cols % bs == 0
    nblk = rows * cols // bs
    blocks = np.frombuffer(bytearray(rng.bytes(nblk * ts)), dtype=np.uint8).reshape(nblk, ts)
    d = rng.uniform(1e-4, 1e-3, size=nblk).astype(np.float16).view(np.uint8).reshape(nblk, 2)
    if qtype == Q.Q4_K:  # block_q4_K: f16 d, f16 dmin, u8 scales[12], u8 qs[128]
        blocks[:, 0:2] = d
        blocks[:, 2:4] = rng.uniform(1e-4, 1e-3, size=nblk).astype(np.float16).view(np.uint8).reshape(nblk, 2)
    elif qtype == Q.Q6_K:  # block_q6_K: u8 ql[128], u8 qh[64], i8 scales[16], f16 d
        blocks[:, 208:210] = d
    else:
        raise ValueError(qtype)
    return blocks.reshape(rows, cols // bs * ts)


def plan():
    """(name, kind, rows, cols, qtype) in llama.cpp's usual order."""
    t = [("token_embd.weight", "q", N_VOCAB, N_EMBD, Q.Q4_K)]
    for i in range(N_LAYER):
        more = use_more_bits(i, N_LAYER)
        p = f"blk.{i}."
        t += [
            (p + "attn_norm.weight", "ones", 1, N_EMBD, None),
            (p + "attn_q.weight", "q", N_EMBD, N_EMBD, Q.Q4_K),
            (p + "attn_q.bias", "small", 1, N_EMBD, None),
            (p + "attn_k.weight", "q", KV_DIM, N_EMBD, Q.Q4_K),
            (p + "attn_k.bias", "small", 1, KV_DIM, None),
            (p + "attn_v.weight", "q", KV_DIM, N_EMBD, Q.Q6_K if more else Q.Q4_K),
            (p + "attn_v.bias", "small", 1, KV_DIM, None),
            (p + "attn_output.weight", "q", N_EMBD, N_EMBD, Q.Q4_K),
            (p + "ffn_norm.weight", "ones", 1, N_EMBD, None),
            (p + "ffn_gate.weight", "q", N_FF, N_EMBD, Q.Q4_K),
            (p + "ffn_up.weight", "q", N_FF, N_EMBD, Q.Q4_K),
            (p + "ffn_down.weight", "q", N_EMBD, N_FF, Q.Q6_K if more else Q.Q4_K),
        ]
    t += [("output_norm.weight", "ones", 1, N_EMBD, None),
          ("output.weight", "q", N_VOCAB, N_EMBD, Q.Q6_K)]
    return t


def field_value(f):
    return f.contents()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=SRC, help="GGUF to copy tokenizer metadata from")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    if a.out.exists() and not a.force:
        print(f"[synth] {a.out} exists ({a.out.stat().st_size / 1e9:.2f} GB); --force to rewrite", file=sys.stderr)
        return
    t0 = time.time()
    src = GGUFReader(a.src)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".gguf.partial")
    w = GGUFWriter(tmp, "qwen2")
    w.add_type("model")
    w.add_name("Qwen2 7B shape synthetic (random weights)")
    w.add_size_label("7.6B")
    w.add_block_count(N_LAYER)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_file_type(15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    w.add_quantization_version(2)

    # Tokenizer: copy every tokenizer.* key; pad the per-token arrays to N_VOCAB.
    for key, f in src.fields.items():
        if not key.startswith("tokenizer."):
            continue
        v = field_value(f)
        if key == "tokenizer.ggml.tokens":
            v = list(v) + [f"[PAD{i}]" for i in range(len(v), N_VOCAB)]
        elif key == "tokenizer.ggml.token_type":
            v = list(v) + [5] * (N_VOCAB - len(v))  # 5 = UNUSED, as convert_hf_to_gguf pads
        elif key == "tokenizer.ggml.scores":
            v = list(v) + [0.0] * (N_VOCAB - len(v))
        if f.types[0] == GGUFValueType.ARRAY:
            w.add_array(key, v)
        else:
            w.add_key_value(key, v, f.types[0])

    rng = np.random.default_rng(a.seed)
    tensors = plan()
    for name, kind, rows, cols, qt in tensors:
        if kind == "q":
            bs, ts = GGML_QUANT_SIZES[qt]
            w.add_tensor_info(name, (rows, cols // bs * ts), np.dtype(np.uint8), rows * cols // bs * ts, raw_dtype=qt)
        else:
            w.add_tensor_info(name, (cols,), np.dtype(np.float32), cols * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    total = 0
    for name, kind, rows, cols, qt in tensors:
        if kind == "q":
            arr = quant_tensor(rng, qt, rows, cols)
        elif kind == "ones":
            arr = np.ones(cols, dtype=np.float32)
        else:
            arr = rng.normal(0, 0.02, size=cols).astype(np.float32)
        w.write_tensor_data(arr)
        total += arr.nbytes
    w.close()
    os.replace(tmp, a.out)
    n_types = {}
    for _, _, r, c, qt in tensors:
        k = qt.name if qt is not None else "F32"
        n_types[k] = n_types.get(k, 0) + 1
    print(f"[synth] wrote {a.out}: {len(tensors)} tensors {n_types}, tensor data {total / 1e9:.3f} GB, "
          f"file {a.out.stat().st_size / 1e9:.3f} GB, {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
