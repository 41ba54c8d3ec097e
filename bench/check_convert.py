#!/usr/bin/env python3
"""End-to-end check of `qwen2 convert` against the reference tools (needs torch/transformers and
llama-cpp-python, so it lives here and not in `cargo test`).

  /work/venv/bin/python bench/check_convert.py [--gguf PATH] [--qwen2 target/release/qwen2]
      [--llama-python /work/llama-venv/bin/python] [--out bench/recorded/check_convert.txt]

1. the real Q4_K_M GGUF → Hugging Face directory (f32) with `qwen2 convert`;
2. transformers loads it unchanged (AutoConfig, AutoTokenizer, AutoModelForCausalLM, no missing,
   unexpected or mismatched weights): tokenizer ids equal the HF reference ids on the fixture
   corpus, the chat template renders as the reference tokenizer's, the 32-token greedy
   continuations equal fixtures/real/greedy.json and the text `qwen2 run --exact --greedy --raw
   --repeat-penalty 1` prints from the same directory; last-position logits vs `qwen2 logits --exact`;
3. that directory → GGUF q8_0 with `qwen2 convert`: llama.cpp (llama-cpp-python) loads it, its
   tokenizer gives the HF ids, its logits are finite and close to ours on the same file, and its
   greedy continuation agrees with transformers' f32 one.

Recorded run (2026-11-27, 2-core Zen3 shared with other jobs; bench/results/ is not committed):

    check_convert.py — transformers 5.24.0, torch 2.15.0+cu132
    model: /root/.cache/qwen2/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf

    1. GGUF → HF f32: ['config.json', 'generation_config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json', 'tokenizer.json', 'tokenizer_config.json'], 2.53 GB, 23.5 s

    2. transformers
      config: Qwen2Config, dtype torch.float32, tie_word_embeddings False, rope {'rope_theta': 1000000.0, 'rope_type': 'default'}
      tokenizer: Qwen2Tokenizer, eos '<|im_end|>', pad '<|endoftext|>', bos None
      [ok] tokenizer ids equal the HF reference on 390 corpus strings (0 differ)
      [ok] chat template renders as the reference tokenizer's
      model: Qwen2ForCausalLM, params dtype torch.float32, loaded in 12.9 s
      [ok] weights load unchanged (loading info: no missing/unexpected/mismatched keys)
      generation_config: eos [151645, 151643], do_sample True, temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.1
      [ok] transformers greedy continuations == fixtures/real/greedy.json (what our --exact engine gives from the GGUF): 6/6 prompts
      [ok] `qwen2 run --exact --greedy --raw` on the converted dir prints transformers' text: 3/3 prompts
      [ok] last-position logits, ours vs transformers on the converted dir: max |Δ| 1.34e-05 (tol 2.01e-02)

    3. HF → GGUF q8_0 → llama.cpp
      wrote 676 MB in 13.2 s
      [ok] llama.cpp loads it: vocab 151936, finite logits
      [ok] llama.cpp tokenizer from our GGUF gives the HF ids: 60/60 strings
      [ok] last-position logits, llama.cpp vs ours on the same q8_0 file: max |Δ| 0.195 (max |logit| 20.1), corr 0.999859, same argmax
      [ok] llama.cpp q8_0 greedy vs transformers f32 on prompt 0: 32/32 tokens agree (first difference at None)

    result: PASS
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--gguf", default=os.path.expanduser("~/.cache/qwen2/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
ap.add_argument("--qwen2", default=os.path.join(ROOT, "target/release/qwen2"))
ap.add_argument("--llama-python", default="/work/llama-venv/bin/python")
ap.add_argument("--out", default=os.path.join(ROOT, "bench/recorded/check_convert.txt"))
ap.add_argument("-t", "--threads", type=int, default=2)
a = ap.parse_args()

lines = []
failures = []


def say(s=""):
    print(s, flush=True)
    lines.append(s)


def check(ok, what):
    say(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        failures.append(what)


def qwen2(*args):
    r = subprocess.run([a.qwen2, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"qwen2 {' '.join(args)} failed:\n{r.stderr}")
    return r


def our_logits(model, ids):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "l.npy")
        qwen2("logits", "-m", model, "--exact", "-t", str(a.threads), "--ids", ",".join(map(str, ids)), "--out", out)
        return np.load(out).reshape(-1)


torch.set_num_threads(a.threads)
prompts = json.load(open(os.path.join(ROOT, "fixtures/real/prompts.json")))
greedy = json.load(open(os.path.join(ROOT, "fixtures/real/greedy.json")))["continuations"]
cases = [json.loads(l) for l in open(os.path.join(ROOT, "fixtures/tokenizer/cases.jsonl")) if l.strip()]

say(f"check_convert.py — transformers {transformers.__version__}, torch {torch.__version__}")
say(f"model: {a.gguf}")
work = tempfile.mkdtemp(prefix="qwen2-check-convert-")
try:
    hf = os.path.join(work, "Qwen2.5-Coder-0.5B-Instruct-f32")
    t0 = time.time()
    qwen2("convert", a.gguf, hf, "--dtype", "f32")
    size = sum(os.path.getsize(os.path.join(hf, f)) for f in os.listdir(hf))
    say(f"\n1. GGUF → HF f32: {sorted(os.listdir(hf))}, {size / 1e9:.2f} GB, {time.time() - t0:.1f} s")

    say("\n2. transformers")
    cfg = AutoConfig.from_pretrained(hf)
    say(f"  config: {type(cfg).__name__}, dtype {cfg.dtype}, tie_word_embeddings {cfg.tie_word_embeddings}, "
        f"rope {getattr(cfg, 'rope_parameters', None)}")
    tok = AutoTokenizer.from_pretrained(hf)
    ref_tok = AutoTokenizer.from_pretrained(os.path.join(ROOT, "fixtures/tokenizer"))
    say(f"  tokenizer: {type(tok).__name__}, eos {tok.eos_token!r}, pad {tok.pad_token!r}, bos {tok.bos_token!r}")
    bad = [c["text"] for c in cases if tok(c["text"]).input_ids != c["ids"]]
    check(not bad, f"tokenizer ids equal the HF reference on {len(cases)} corpus strings ({len(bad)} differ)")
    convs = [
        [{"role": "user", "content": "Write a prime test in Python."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}],
    ]
    same = all(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
               == ref_tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs)
    check(same, "chat template renders as the reference tokenizer's")
    t0 = time.time()
    model, info = AutoModelForCausalLM.from_pretrained(hf, output_loading_info=True)
    model.eval()
    say(f"  model: {type(model).__name__}, params dtype {next(model.parameters()).dtype}, loaded in {time.time() - t0:.1f} s")
    problems = {k: v for k, v in info.items() if v}
    check(not problems, f"weights load unchanged (loading info: {problems or 'no missing/unexpected/mismatched keys'})")
    gc = model.generation_config
    say(f"  generation_config: eos {gc.eos_token_id}, do_sample {gc.do_sample}, temperature {gc.temperature}, "
        f"top_p {gc.top_p}, top_k {gc.top_k}, repetition_penalty {gc.repetition_penalty}")

    n_same = 0
    hf_greedy = []
    for i, p in enumerate(prompts):
        want = greedy[i]["ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([p["ids"]]), max_new_tokens=len(want), do_sample=False,
                                 temperature=None, top_p=None, top_k=None, repetition_penalty=None,
                                 eos_token_id=[151643, 151645], pad_token_id=151643)
        got = out[0, len(p["ids"]):].tolist()
        hf_greedy.append(got)
        n_same += got == want
    check(n_same == len(prompts), f"transformers greedy continuations == fixtures/real/greedy.json "
          f"(what our --exact engine gives from the GGUF): {n_same}/{len(prompts)} prompts")

    n_text = 0
    for i in (1, 2, 4):
        p = prompts[i]
        # --repeat-penalty 1: the converted generation_config sets 1.1, transformers' greedy uses none.
        r = qwen2("run", "-m", hf, "--exact", "--greedy", "--repeat-penalty", "1", "--raw", "-n", str(len(greedy[i]["ids"])),
                  "-t", str(a.threads), "-p", p["text"])
        ours = r.stdout
        theirs = tok.decode(hf_greedy[i], skip_special_tokens=True)
        n_text += ours.rstrip("\n") == theirs.rstrip("\n") or ours == theirs
    check(n_text == 3, f"`qwen2 run --exact --greedy --raw` on the converted dir prints transformers' text: {n_text}/3 prompts")

    ids = prompts[0]["ids"]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0, -1].float().numpy()
    ours = our_logits(hf, ids)
    d = float(np.abs(ours - ref).max())
    tol = 1e-3 * float(np.abs(ref).max())
    check(d <= tol, f"last-position logits, ours vs transformers on the converted dir: max |Δ| {d:.2e} (tol {tol:.2e})")
    del model

    say("\n3. HF → GGUF q8_0 → llama.cpp")
    back = os.path.join(work, "back-q8_0.gguf")
    t0 = time.time()
    qwen2("convert", hf, back, "--outtype", "q8_0")
    say(f"  wrote {os.path.getsize(back) / 1e6:.0f} MB in {time.time() - t0:.1f} s")
    ours = our_logits(back, ids)
    sample = [c for c in cases if c["text"]][:60]
    job = json.dumps({"model": back, "ids": ids, "n": len(greedy[0]["ids"]), "threads": a.threads,
                      "texts": [c["text"] for c in sample]})
    code = r'''
import ctypes, json, sys
import numpy as np
import llama_cpp as L
j = json.loads(sys.stdin.read())
@L.llama_log_callback
def _quiet(level, text, ud):
    pass
L.llama_log_set(_quiet, ctypes.c_void_p(0))
L.llama_backend_init()
model = L.llama_model_load_from_file(j["model"].encode(), L.llama_model_default_params())
assert model, "llama.cpp could not load the GGUF"
vocab = L.llama_model_get_vocab(model)
n_vocab = L.llama_vocab_n_tokens(vocab)
def tokenize(t):
    b = t.encode()
    buf = (L.llama_token * (len(b) + 16))()
    n = L.llama_tokenize(vocab, b, len(b), buf, len(buf), False, True)
    return list(buf[:n])
cp = L.llama_context_default_params()
cp.n_ctx = 256; cp.n_batch = 256; cp.n_ubatch = 256; cp.n_threads = cp.n_threads_batch = j["threads"]
ctx = L.llama_init_from_model(model, cp)
ids = j["ids"]
arr = (L.llama_token * len(ids))(*ids)
assert L.llama_decode(ctx, L.llama_batch_get_one(arr, len(ids))) == 0
logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()
out = []
nxt = int(np.argmax(logits))
for _ in range(j["n"]):
    out.append(nxt)
    one = (L.llama_token * 1)(nxt)
    assert L.llama_decode(ctx, L.llama_batch_get_one(one, 1)) == 0
    nxt = int(np.argmax(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))))
print(json.dumps({"n_vocab": n_vocab, "logits": logits.tolist(), "greedy": out,
                  "tokens": [tokenize(t) for t in j["texts"]]}))
'''
    r = subprocess.run([a.llama_python, "-c", code], input=job, capture_output=True, text=True)
    if r.returncode != 0:
        check(False, f"llama.cpp loads the q8_0 GGUF: {r.stderr[-2000:]}")
    else:
        res = json.loads(r.stdout)
        ref = np.array(res["logits"], dtype=np.float32)
        check(res["n_vocab"] == 151936 and np.isfinite(ref).all(), f"llama.cpp loads it: vocab {res['n_vocab']}, finite logits")
        tok_same = sum(t == c["ids"] for t, c in zip(res["tokens"], sample))
        check(tok_same == len(sample), f"llama.cpp tokenizer from our GGUF gives the HF ids: {tok_same}/{len(sample)} strings")
        d = float(np.abs(ours - ref).max())
        corr = float(np.corrcoef(ours, ref)[0, 1])
        check(int(np.argmax(ours)) == int(np.argmax(ref)) and corr > 0.999,
              f"last-position logits, llama.cpp vs ours on the same q8_0 file: max |Δ| {d:.3f} "
              f"(max |logit| {np.abs(ref).max():.1f}), corr {corr:.6f}, same argmax")
        agree = sum(x == y for x, y in zip(res["greedy"], hf_greedy[0]))
        first_diff = next((k for k, (x, y) in enumerate(zip(res["greedy"], hf_greedy[0])) if x != y), None)
        check(agree >= len(hf_greedy[0]) // 2,
              f"llama.cpp q8_0 greedy vs transformers f32 on prompt 0: {agree}/{len(hf_greedy[0])} tokens agree"
              f" (first difference at {first_diff})")
finally:
    shutil.rmtree(work, ignore_errors=True)

say(f"\nresult: {'PASS' if not failures else 'FAIL: ' + '; '.join(failures)}")
os.makedirs(os.path.dirname(a.out), exist_ok=True)
with open(a.out, "w") as f:
    f.write("\n".join(lines) + "\n")
sys.exit(1 if failures else 0)
