#!/usr/bin/env python3
"""llama.cpp (through llama-cpp-python's low-level API) measured exactly like `qwen2 bench`.

  llama_bench.py -m MODEL [-p 512] [-n 128] [-r 3] [-t THREADS] [--json]

* load_s: llama_model_load_from_file (mmap, llama.cpp defaults incl. CPU weight repacking).
  Context creation is reported separately as ctx_s (ours creates its KV cache outside load too).
* prefill: the same P pseudo-random token ids as `qwen2 bench` (same xorshift, ids < min(vocab,
  150000)), one llama_decode of a P-token batch (n_batch = n_ubatch = P) into a fresh context,
  logits for the last token only.
* decode: KV memory cleared, then N single-token llama_decode calls from position 0, each
  followed by a greedy argmax over the last logits (numpy view, no sampler objects).
* one warm-up repetition, then R measured ones: median/min/max tok/s.
* peak_rss_bytes: ru_maxrss of a fresh worker subprocess (os.wait4), i.e. including the Python
  interpreter + numpy + libllama; baseline_rss_bytes is the worker's RSS just before the model
  load, for reference.
* perf_*: llama.cpp's own llama_perf_context timings over the measured repetitions, as a cross-
  check of the wall-clock numbers (perf_agreement = wall / perf, should be ~1).
"""
import argparse
import json
import os
import subprocess
import sys
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-p", "--prompt", type=int, default=512)
    ap.add_argument("-n", "--gen", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    ap.add_argument("--flash-attn", choices=["auto", "on", "off"], default="auto",
                    help="llama.cpp flash attention (default: llama.cpp's default, auto)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def rss_now():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def stats(v):
    v = sorted(v)
    return (v[len(v) // 2], v[0], v[-1]) if v else (0.0, 0.0, 0.0)


def worker(a):
    import ctypes
    import numpy as np
    import llama_cpp as L

    # Silence llama.cpp's logging (keep a reference to the callback).
    @L.llama_log_callback
    def _quiet(level, text, user_data):
        pass
    L.llama_log_set(_quiet, ctypes.c_void_p(0))
    L.llama_backend_init()
    baseline_rss = rss_now()

    mp = L.llama_model_default_params()
    t0 = time.perf_counter()
    model = L.llama_model_load_from_file(a.model.encode(), mp)
    load_s = time.perf_counter() - t0
    if not model:
        raise SystemExit(f"llama.cpp failed to load {a.model}")
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    buf = ctypes.create_string_buffer(256)
    name = a.model
    if L.llama_model_meta_val_str(model, b"general.name", buf, 256) > 0:
        name = buf.value.decode(errors="replace")

    # Same token stream as crates/qwen2-cli/src/bench.rs.
    M64 = (1 << 64) - 1
    state = [0x9E3779B97F4A7C15]
    vmod = min(n_vocab, 150_000)

    def nxt():
        s = state[0]
        s ^= (s << 13) & M64
        s ^= s >> 7
        s ^= (s << 17) & M64
        state[0] = s
        return s % vmod

    P, N = a.prompt, a.gen
    prompt = (L.llama_token * max(P, 1))(*[nxt() for _ in range(P)])
    one = (L.llama_token * 1)()

    cp = L.llama_context_default_params()
    cp.n_ctx = max(P, N) + 1
    cp.n_batch = max(P, 1)
    cp.n_ubatch = max(P, 1)
    cp.n_seq_max = 1
    cp.n_threads = a.threads
    cp.n_threads_batch = a.threads
    cp.no_perf = False
    cp.flash_attn_type = {"auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                          "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED}[a.flash_attn]

    pre, dec, ctx_times = [], [], []
    perf_p_ms = perf_e_ms = 0.0
    perf_p_n = perf_e_n = 0
    wall_p = wall_e = 0.0
    finite = True
    for rep in range(a.reps + 1):
        t0 = time.perf_counter()
        ctx = L.llama_init_from_model(model, cp)
        ctx_times.append(time.perf_counter() - t0)
        if not ctx:
            raise SystemExit("llama_init_from_model failed")
        L.llama_perf_context_reset(ctx)
        if P > 0:
            t0 = time.perf_counter()
            rc = L.llama_decode(ctx, L.llama_batch_get_one(prompt, P))
            L.llama_synchronize(ctx)
            dt = time.perf_counter() - t0
            if rc != 0:
                raise SystemExit(f"llama_decode(prefill) = {rc}")
            lg = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            finite &= bool(np.isfinite(lg).all())
            if rep > 0:
                pre.append(P / dt)
                wall_p += dt
        if N > 0:
            L.llama_memory_clear(L.llama_get_memory(ctx), True)
            t0 = time.perf_counter()
            tok = nxt()
            for _ in range(N):
                one[0] = tok
                rc = L.llama_decode(ctx, L.llama_batch_get_one(one, 1))
                if rc != 0:
                    raise SystemExit(f"llama_decode(decode) = {rc}")
                lg = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
                tok = int(lg.argmax())
            dt = time.perf_counter() - t0
            finite &= bool(np.isfinite(lg).all())
            if rep > 0:
                dec.append(N / dt)
                wall_e += dt
        if rep > 0:
            pd = L.llama_perf_context(ctx)
            perf_p_ms += pd.t_p_eval_ms
            perf_p_n += pd.n_p_eval
            perf_e_ms += pd.t_eval_ms
            perf_e_n += pd.n_eval
        L.llama_free(ctx)
    L.llama_model_free(model)

    pm, pmin, pmax = stats(pre)
    dm, dmin, dmax = stats(dec)
    out = {
        "engine": "llama.cpp",
        "llama_cpp_python": L.__version__,
        "model": name,
        "threads": a.threads,
        "kernels": L.llama_print_system_info().decode().strip(),
        "flash_attn": a.flash_attn,
        "prompt_tokens": P,
        "gen_tokens": N,
        "reps": a.reps,
        "prefill_tok_s": pm, "prefill_tok_s_min": pmin, "prefill_tok_s_max": pmax,
        "decode_tok_s": dm, "decode_tok_s_min": dmin, "decode_tok_s_max": dmax,
        "load_s": load_s,
        "ctx_s": sorted(ctx_times)[len(ctx_times) // 2],
        "baseline_rss_bytes": baseline_rss,
        "logits_finite": finite,
        # llama.cpp's own accounting over the measured reps (cross-check).
        "perf_prefill_tok_s": perf_p_n / (perf_p_ms / 1e3) if perf_p_ms > 0 else 0.0,
        "perf_decode_tok_s": perf_e_n / (perf_e_ms / 1e3) if perf_e_ms > 0 else 0.0,
        "perf_n_p_eval": perf_p_n,
        "perf_n_eval": perf_e_n,
        "perf_agreement_prefill": (wall_p * 1e3 / perf_p_ms) if perf_p_ms > 0 else None,
        "perf_agreement_decode": (wall_e * 1e3 / perf_e_ms) if perf_e_ms > 0 else None,
    }
    print(json.dumps(out), flush=True)


def main():
    a = parse_args()
    if a.worker:
        worker(a)
        return
    # Fresh subprocess per model so that ru_maxrss is this model's peak only.
    cmd = [sys.executable, os.path.abspath(__file__), "--worker"] + sys.argv[1:]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"llama_bench worker failed (rc={p.returncode})")
    r = json.loads(out.decode().strip().splitlines()[-1])
    r["peak_rss_bytes"] = ru.ru_maxrss * 1024  # Linux: KiB
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{r['model']}  llama.cpp {r['llama_cpp_python']}  threads={r['threads']}")
        print(f"pp{a.prompt}: {r['prefill_tok_s']:.1f} tok/s (min {r['prefill_tok_s_min']:.1f}, max "
              f"{r['prefill_tok_s_max']:.1f}; llama_perf {r['perf_prefill_tok_s']:.1f})")
        print(f"tg{a.gen}: {r['decode_tok_s']:.1f} tok/s (min {r['decode_tok_s_min']:.1f}, max "
              f"{r['decode_tok_s_max']:.1f}; llama_perf {r['perf_decode_tok_s']:.1f})")
        print(f"load: {r['load_s']:.2f} s (+ctx {r['ctx_s']:.3f} s), peak RSS: {r['peak_rss_bytes'] / 2**20:.1f} MiB "
              f"(python+libllama baseline {r['baseline_rss_bytes'] / 2**20:.1f} MiB), logits finite: {r['logits_finite']}")


if __name__ == "__main__":
    main()
