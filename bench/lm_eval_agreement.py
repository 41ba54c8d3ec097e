#!/usr/bin/env python3
"""Skeleton: agreement of `qwen2 eval` with lm-evaluation-harness (a later step, not run in CI).

Plan:
  1. Run lm-eval on the same model (HF weights) and tasks, with per-sample logging:
       pip install lm-eval
       lm_eval --model hf --model_args pretrained=Qwen/Qwen2.5-0.5B --tasks mmlu --num_fewshot 5 \
               --limit 100 --log_samples --output_path lm-eval-out
  2. Run ours on the same items:
       qwen2 eval -m <model dir> --tasks mmlu --limit 100 --out ours
  3. Convert lm-eval's results into our results.json shape (this script) and compare:
       python3 bench/lm_eval_agreement.py lm-eval-out/<model>/results_*.json > lm-eval.results.json
       qwen2 eval ... --out ours --compare lm-eval.results.json

Still to do before the numbers mean agreement: lm-eval's few-shot draw for HellaSwag, ARC
and Winogrande uses Python's `random.Random(1234).sample` over the train split, ours a
SplitMix64 draw per item (MMLU's first-n dev examples and GSM8K's fixed exemplars are the same
in both), so compare per-sample log-likelihoods only on MMLU/GSM8K/LAMBADA, or port the sampler.
"""
import json
import sys

# lm-eval metric keys look like "acc,none" / "acc_stderr,none"; ours are "acc" with a stderr.
NAMES = {"mmlu": "mmlu", "hellaswag": "hellaswag", "arc_challenge": "arc_challenge",
         "winogrande": "winogrande", "gsm8k_cot": "gsm8k", "lambada_openai": "lambada"}


def convert(doc):
    tasks = {}
    for lm_task, ours in NAMES.items():
        r = doc.get("results", {}).get(lm_task)
        if r is None:
            continue
        metrics = {}
        for key, value in r.items():
            name, _, filt = key.partition(",")
            if name.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = r.get(f"{name}_stderr,{filt}")
            label = name if filt in ("none", "") else f"{name}_{filt}"
            metrics[label] = {"value": value, "stderr": stderr if isinstance(stderr, (int, float)) else None}
        n = doc.get("n-samples", {}).get(lm_task, {}).get("effective", 0)
        tasks[ours] = {"task": ours, "n": n, "metrics": metrics}
    return {"tasks": tasks, "engine_version": "lm-evaluation-harness"}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(convert(json.load(f)), indent=2))
