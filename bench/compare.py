#!/usr/bin/env python3
"""Side-by-side benchmark: ours (`qwen2 bench --json`) vs llama.cpp (bench/llama_bench.py) on the
same GGUF and thread count, each run in its own process, alternating the order every round.
Prints one markdown table (and optionally rewrites it into BENCHMARKS.md). Run via bench/compare.sh.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = Path(os.environ.get("QWEN2_CACHE", Path.home() / ".cache" / "qwen2"))
MODELS = {
    "0.5B": CACHE / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "1.5B": CACHE / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    "7B-shape": CACHE / "qwen2-7b-shape-synthetic-q4_k_m.gguf",
}
# (model, threads, prompt, gen): the configurations of issue 4.
DEFAULT_CONFIGS = ["0.5B:2:512:128", "7B-shape:2:128:32", "1.5B:2:512:128", "0.5B:1:512:128"]  # run order; table is sorted
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def weight_bytes(path):
    """(all tensor bytes, bytes read per decode step). A decode step reads every weight except the
    token embedding, of which it reads a single row."""
    from gguf import GGUFReader
    r = GGUFReader(str(path))
    total = per_tok = 0
    for t in r.tensors:
        nb = int(t.n_bytes)
        total += nb
        if t.name == "token_embd.weight":
            rows = int(t.shape[-1]) if len(t.shape) > 1 else 1
            per_tok += nb // rows
        else:
            per_tok += nb
    return total, per_tok


def stream(threads, binary):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_PROC_BIND="spread")
    out = subprocess.run([str(binary)], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def run_json(cmd, env=None):
    t0 = time.time()
    load = os.getloadavg()[0]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["_wall_s"] = time.time() - t0
    r["_loadavg_before"] = load
    return r


def med(v):
    return statistics.median(v) if v else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--qwen2", default=os.environ.get("QWEN2_BIN", str(ROOT / "target/release/qwen2")))
    ap.add_argument("--python", default=os.environ.get("LLAMA_PY", str(HERE / ".venv/bin/python")),
                    help="python with llama_cpp installed (default bench/.venv)")
    ap.add_argument("--config", action="append", help="MODEL:THREADS:P:N (repeatable); MODEL is a key "
                    f"of {list(MODELS)} or a path. Default: {DEFAULT_CONFIGS}")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", 3)))
    ap.add_argument("--reps", type=int, default=int(os.environ.get("REPS", 3)))
    ap.add_argument("--raw", default=str(HERE / "results" / "last-run.jsonl"))
    ap.add_argument("--update-md", default=None, help="rewrite the table between the compare markers in this file")
    a = ap.parse_args()
    configs = a.config or DEFAULT_CONFIGS

    # Snapshot the binary: other people may rebuild target/release while we run.
    tmpd = Path(tempfile.mkdtemp(prefix="qwen2-compare-"))
    ours_bin = tmpd / "qwen2"
    shutil.copy2(a.qwen2, ours_bin)
    try:
        git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        git = "?"
    stream_bin = tmpd / "stream"
    subprocess.run(["cc", "-O3", "-march=native", "-fopenmp", str(HERE / "stream.c"), "-o", str(stream_bin)], check=True)

    bw = {}
    for th in sorted({int(c.split(":")[1]) for c in configs}):
        s = [stream(th, stream_bin) for _ in range(3)]
        bw[th] = {"triad_gb_s": max(x["triad_gb_s"] for x in s), "read_gb_s": max(x["read_gb_s"] for x in s)}
        log(f"[compare] STREAM {th} thread(s): triad {bw[th]['triad_gb_s']:.1f} GB/s, read {bw[th]['read_gb_s']:.1f} GB/s")

    def emit(rows, final):
        order = {k: i for i, k in enumerate(MODELS)}
        rows = sorted(rows, key=lambda r: (order.get(r["model"], 99), r["threads"]))
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        out = []
        out.append(f"Run {now}, ours = `{a.qwen2}` (git {git}, kernels `{rows[0]['kernels'] if rows else '?'}`), "
                   f"llama.cpp = llama-cpp-python {rows[0]['llama_version'] if rows else '?'}; "
                   f"{a.rounds} alternating rounds x {a.reps} reps (+1 warm-up) each; tok/s = median over rounds "
                   f"of each run's median; ratio = median of per-round ours/llama.cpp (min-max in brackets); "
                   f"took {(time.time() - t_start) / 60:.1f} min.")
        out.append("")
        out.append("| model | threads | pp tok/s ours | pp llama.cpp | pp ratio | tg tok/s ours | tg llama.cpp | tg ratio "
                   "| load s ours / llama.cpp | peak RSS MiB ours / llama.cpp | loadavg |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            out.append(
                f"| {r['model']} | {r['threads']} | {r['pp_o']:.1f} | {r['pp_l']:.1f} | **{r['pp_r']:.2f}x** "
                f"[{r['pp_rmin']:.2f}-{r['pp_rmax']:.2f}] (pp{r['P']}) | {r['tg_o']:.2f} | {r['tg_l']:.2f} | "
                f"**{r['tg_r']:.2f}x** [{r['tg_rmin']:.2f}-{r['tg_rmax']:.2f}] (tg{r['N']}) | "
                f"{r['load_o']:.2f} / {r['load_l']:.2f} | {r['rss_o'] / 2**20:.0f} / {r['rss_l'] / 2**20:.0f} "
                f"(py {r['rss_l_base'] / 2**20:.0f}) | {r['loadavg']:.1f} |")
        out.append("")
        out.append("Bandwidth bound for decode (bytes read per token = all weights except token_embd, plus one "
                   "token_embd row; KV-cache reads ignored; bandwidth = best STREAM triad at that thread count):")
        out.append("")
        out.append("| model | threads | GGUF tensor data MB | bytes/token MB | STREAM triad GB/s | bound tok/s "
                   "| tg ours (% of bound) | tg llama.cpp (% of bound) |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in rows:
            bound = r["bw"] * 1e9 / r["tok_b"]
            out.append(f"| {r['model']} | {r['threads']} | {r['total_b'] / 1e6:.0f} | {r['tok_b'] / 1e6:.0f} | "
                       f"{r['bw']:.1f} | {bound:.1f} | {r['tg_o']:.2f} ({100 * r['tg_o'] / bound:.0f}%) | "
                       f"{r['tg_l']:.2f} ({100 * r['tg_l'] / bound:.0f}%) |")
        out.append("")
        out.append("STREAM: " + ", ".join(f"{th} thread(s) triad {v['triad_gb_s']:.1f} GB/s, read-only "
                                          f"{v['read_gb_s']:.1f} GB/s" for th, v in bw.items()) + ".")
        out.append("llama.cpp wall-clock vs its own llama_perf decode timing (should be ~1): " +
                   ", ".join(f"{r['model']}/t{r['threads']} {r['perf_agree']:.3f}" for r in rows) + ".")
        text = "\n".join(out)
        if final:
            print(text)
        else:
            text += f"\n\n(partial: {len(rows)} of {len(configs)} configurations done)"
        if a.update_md:
            md = Path(a.update_md)
            s = md.read_text() if md.exists() else f"{BEGIN}\n{END}\n"
            if BEGIN in s and END in s:
                s = s[: s.index(BEGIN) + len(BEGIN)] + "\n" + text + "\n" + s[s.index(END):]
            else:
                s += f"\n{BEGIN}\n{text}\n{END}\n"
            md.write_text(s)
            log(f"[compare] updated {md}")

    Path(a.raw).parent.mkdir(parents=True, exist_ok=True)
    rawf = open(a.raw, "w")
    rows = []
    t_start = time.time()
    for c in configs:
        mkey, th, P, N = c.split(":")
        th, P, N = int(th), int(P), int(N)
        path = MODELS.get(mkey, Path(mkey))
        total_b, tok_b = weight_bytes(path)
        res = {"ours": [], "llama": []}
        for rnd in range(a.rounds):
            order = ["ours", "llama"] if rnd % 2 == 0 else ["llama", "ours"]
            for eng in order:
                if eng == "ours":
                    cmd = [str(ours_bin), "bench", "-m", str(path), "-p", str(P), "-n", str(N),
                           "-r", str(a.reps), "-t", str(th), "--json"]
                else:
                    cmd = [a.python, str(HERE / "llama_bench.py"), "-m", str(path), "-p", str(P), "-n", str(N),
                           "-r", str(a.reps), "-t", str(th), "--json"]
                r = run_json(cmd)
                r.update(engine=eng, config=c, round=rnd)
                rawf.write(json.dumps(r) + "\n"); rawf.flush()
                res[eng].append(r)
                log(f"[compare] {mkey} t={th} round {rnd} {eng:5s}: pp{P} {r['prefill_tok_s']:8.2f}  "
                    f"tg{N} {r['decode_tok_s']:7.2f}  load {r['load_s']:.2f}s  rss {r['peak_rss_bytes'] / 2**20:.0f} MiB"
                    f"  (loadavg {r['_loadavg_before']:.1f}, {r['_wall_s']:.0f}s)")
        o, l = res["ours"], res["llama"]
        pp_ratio = [x["prefill_tok_s"] / y["prefill_tok_s"] for x, y in zip(o, l)]
        tg_ratio = [x["decode_tok_s"] / y["decode_tok_s"] for x, y in zip(o, l)]
        rows.append(dict(
            model=mkey, threads=th, P=P, N=N,
            pp_o=med([x["prefill_tok_s"] for x in o]), pp_l=med([x["prefill_tok_s"] for x in l]),
            pp_r=med(pp_ratio), pp_rmin=min(pp_ratio), pp_rmax=max(pp_ratio),
            tg_o=med([x["decode_tok_s"] for x in o]), tg_l=med([x["decode_tok_s"] for x in l]),
            tg_r=med(tg_ratio), tg_rmin=min(tg_ratio), tg_rmax=max(tg_ratio),
            load_o=med([x["load_s"] for x in o]), load_l=med([x["load_s"] for x in l]),
            rss_o=max(x["peak_rss_bytes"] for x in o), rss_l=max(x["peak_rss_bytes"] for x in l),
            rss_l_base=med([x.get("baseline_rss_bytes", 0) for x in l]),
            perf_agree=med([x.get("perf_agreement_decode") or float("nan") for x in l]),
            kernels=o[0].get("kernels", "?"),
            total_b=total_b, tok_b=tok_b, bw=bw[th]["triad_gb_s"],
            loadavg=med([x["_loadavg_before"] for x in o + l]),
            llama_version=l[0].get("llama_cpp_python", "?"),
        ))
        emit(rows, final=False)
    rawf.close()
    emit(rows, final=True)
    shutil.rmtree(tmpd, ignore_errors=True)


if __name__ == "__main__":
    main()
