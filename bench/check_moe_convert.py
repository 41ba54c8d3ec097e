#!/usr/bin/env python3
"""transformers loads what `qwen2 convert` writes from a Qwen2-MoE GGUF (needs torch, so it is
here and not in `cargo test`).

  /work/venv/bin/python bench/check_moe_convert.py [--qwen2 target/release/qwen2]

For fixtures/tiny/{moe_topk,moe_norm_mixed}: model.gguf (written by gguf-py) → HF f32 directory
with `qwen2 convert`; AutoModelForCausalLM loads it with no missing/unexpected/mismatched keys
and its logits on golden.json's input ids equal the fixture's transformers logits (tol 1e-4).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qwen2", default=os.path.join(ROOT, "target", "release", "qwen2"))
    args = ap.parse_args()
    print(f"check_moe_convert.py — transformers {transformers.__version__}, torch {torch.__version__}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for case in ("moe_topk", "moe_norm_mixed"):
            fx = os.path.join(ROOT, "fixtures", "tiny", case)
            out = os.path.join(tmp, case)
            subprocess.run([args.qwen2, "convert", os.path.join(fx, "model.gguf"), out, "--dtype", "f32"],
                           check=True, capture_output=True)
            model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
            bad = {k: v for k, v in info.items() if v and k != "error_msgs"} | (
                {"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {})
            ids = json.load(open(os.path.join(fx, "golden.json")))["input_ids"]
            with torch.no_grad():
                got = model(torch.tensor([ids])).logits[0].float().numpy()
            want = np.load(os.path.join(fx, "logits.npy"))
            d = float(np.abs(got - want).max())
            good = not bad and d <= 1e-4
            ok &= good
            print(f"  [{'ok' if good else 'FAIL'}] {case}: {type(model).__name__} "
                  f"({model.config.model_type}, {model.config.num_experts} experts, "
                  f"mlp_only_layers {model.config.mlp_only_layers}); loading issues {bad or 'none'}; "
                  f"max |Δlogit| vs fixture {d:.2e} (tol 1e-4)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
