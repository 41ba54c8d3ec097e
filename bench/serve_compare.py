#!/usr/bin/env python3
"""Serving throughput: `qwen2 serve` vs llama-cpp-python's OpenAI server on the same GGUF.

Starts each server in turn (same GGUF, same thread count), and for 1, 4, 8, 16 concurrent
streaming clients sends N fixed ~100-token completion prompts each (max_tokens 128,
temperature 0), measuring aggregate generated tokens/s and p50/p99 time to first token.
Prints a markdown table for BENCHMARKS.md, our single-stream decode rate, and the 8-client
throughput ratio.

Run from the repository root with the llama-cpp-python venv (it needs the server extra:
uvicorn, fastapi, sse-starlette, starlette-context, pydantic-settings):

    /work/llama-venv/bin/python bench/serve_compare.py            # the real run (~5-10 min)
    /work/llama-venv/bin/python bench/serve_compare.py --levels 1,2 --max-tokens 4 --requests 2

Notes on llama-cpp-python's server (0.3.x): it serves one request at a time per model (a lock
around the model; concurrent requests wait their turn), and by default `interrupt_requests`
is on, which ENDS the running stream early whenever another request arrives. We start it with
`--interrupt_requests False` so every request runs to completion, serialized. Only the standard
library is used for HTTP, so the client side is the same for both servers.
"""

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

DEFAULT_MODEL = os.path.expanduser("~/.cache/qwen2/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")

TOPICS = [
    "binary search over a sorted list", "an LRU cache with a dict and a linked list",
    "Dijkstra's shortest paths with a heap", "merge sort that counts inversions",
    "a trie with insert, search and prefix listing", "run-length encoding and decoding",
    "a thread-safe bounded queue", "the Levenshtein distance with one row of memory",
    "topological sort that reports cycles", "a token bucket rate limiter",
    "parsing CSV lines with quoted fields", "a min-heap without heapq",
    "matrix multiplication for lists of lists", "a union-find with path compression",
    "the knapsack problem by dynamic programming", "an interval tree for overlaps",
]


def prompt(i):
    """A ~100-token code prompt; distinct per request so no server reuses another's prefix."""
    topic = TOPICS[i % len(TOPICS)]
    return (
        f"# Task {i}: implement {topic} in Python.\n"
        "# Requirements:\n"
        "# - clear names and type hints on every function\n"
        "# - a docstring explaining the algorithm and its complexity\n"
        "# - handle empty inputs and invalid arguments with ValueError\n"
        "# - no third-party packages; only the standard library\n"
        "# - include a small self-test under `if __name__ == \"__main__\":`\n"
        f"# Variant {i * 7919 % 1000}: prefer readability over cleverness.\n"
        "\n"
        "from __future__ import annotations\n"
        "\n"
        "import sys\n"
        "from typing import Iterable, List, Optional\n"
        "\n"
        "\n"
        "def "
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, path, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become ready")


def one_request(port, model_name, i, max_tokens):
    """One streaming completion: (ttft_s, total_s, generated_tokens, decode_s)."""
    body = {
        "prompt": prompt(i),
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if model_name:
        body["model"] = model_name
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    first = last = None
    chunks = 0
    usage = None
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        v = json.loads(data)
        if v.get("usage"):
            usage = v["usage"].get("completion_tokens")
        for ch in v.get("choices") or []:
            if ch.get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
    end = time.perf_counter()
    c.close()
    if first is None:
        raise RuntimeError("no text streamed")
    tokens = usage if usage else chunks
    return first - t0, end - t0, tokens, last - first


def run_level(port, model_name, clients, n_requests, max_tokens, base):
    results, errors = [], []
    lock = threading.Lock()
    next_i = [0]

    def worker():
        while True:
            with lock:
                if next_i[0] >= n_requests:
                    return
                i = base + next_i[0]
                next_i[0] += 1
            try:
                r = one_request(port, model_name, i, max_tokens)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 (report every failure)
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    ttfts = sorted(r[0] for r in results)
    tokens = sum(r[2] for r in results)
    decode = [(r[2] - 1) / r[3] for r in results if r[2] > 1 and r[3] > 0]
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "wall": wall,
        "tok_s": tokens / wall,
        "ttft_p50": pct(ttfts, 50),
        "ttft_p99": pct(ttfts, 99),
        "decode_tok_s": sum(decode) / len(decode) if decode else float("nan"),
    }


def pct(sorted_xs, p):
    if not sorted_xs:
        return float("nan")
    k = min(len(sorted_xs) - 1, max(0, round(p / 100 * (len(sorted_xs) - 1))))
    return sorted_xs[k]


def start_ours(a, port):
    cmd = [a.qwen2, "serve", "-m", a.model, "-t", str(a.threads), "--port", str(port),
           "--parallel", str(a.parallel or max(a.levels)), "--ctx", str(a.ctx),
           "--queue", "256"]
    return cmd, "/health", None


def start_llama(a, port):
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", a.model,
           "--n_threads", str(a.threads), "--n_threads_batch", str(a.threads),
           "--n_ctx", str(a.ctx), "--port", str(port), "--host", "127.0.0.1",
           "--interrupt_requests", "False"]
    return cmd, "/v1/models", None


def bench_server(name, starter, a):
    port = free_port()
    cmd, ready_path, model_name = starter(a, port)
    log = open(os.path.join(a.log_dir, f"serve_compare_{name}.log"), "w")
    print(f"[{name}] {' '.join(cmd)}", file=sys.stderr)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    rows = []
    try:
        wait_ready(port, proc, ready_path)
        one_request(port, model_name, 10_000, 4)  # warm-up (first-use allocations)
        for li, clients in enumerate(a.levels):
            n = a.requests or max(4, clients)
            r = run_level(port, model_name, clients, n, a.max_tokens, base=li * 1000)
            print(f"[{name}] {clients:>2} clients: {r['tokens']} tokens in {r['wall']:.1f}s = "
                  f"{r['tok_s']:.1f} tok/s, TTFT p50 {r['ttft_p50']*1000:.0f} ms "
                  f"p99 {r['ttft_p99']*1000:.0f} ms", file=sys.stderr)
            rows.append(r)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--qwen2", default="target/release/qwen2", help="our binary")
    ap.add_argument("--levels", default="1,4,8,16", help="concurrent clients per level")
    ap.add_argument("--requests", type=int, default=0,
                    help="requests per level (default: max(4, clients))")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=0,
                    help="our --parallel (default: the largest level)")
    ap.add_argument("--only", choices=["both", "ours", "llama"], default="both")
    ap.add_argument("--log-dir", default=os.environ.get("TMPDIR", "/tmp"))
    ap.add_argument("--json", help="also write the raw results here")
    a = ap.parse_args()
    a.levels = [int(x) for x in a.levels.split(",") if x]
    if not os.path.exists(a.model):
        sys.exit(f"model not found: {a.model}")

    t0 = time.time()
    results = {}
    if a.only in ("both", "ours"):
        if not os.access(a.qwen2, os.X_OK):
            sys.exit(f"{a.qwen2} missing: cargo build --release -p qwen2-cli")
        results["qwen2"] = bench_server("qwen2", start_ours, a)
    if a.only in ("both", "llama"):
        try:
            import llama_cpp.server.app  # noqa: F401
        except ImportError as e:
            sys.exit(f"llama-cpp-python's server extra is missing ({e}): "
                     "pip install uvicorn fastapi sse-starlette starlette-context pydantic-settings")
        results["llama-cpp-python"] = bench_server("llama", start_llama, a)

    print(f"\nServing, {os.path.basename(a.model)}, {a.threads} threads, completions of "
          f"max_tokens {a.max_tokens} from ~100-token prompts, temperature 0, streaming "
          f"(requests per level: {a.requests or 'max(4, clients)'}):\n")
    print("| server | clients | requests | gen tokens | aggregate tok/s | TTFT p50 (ms) | TTFT p99 (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        for r in rows:
            print(f"| {name} | {r['clients']} | {r['requests']} | {r['tokens']} | {r['tok_s']:.1f} "
                  f"| {r['ttft_p50']*1000:.0f} | {r['ttft_p99']*1000:.0f} |")
    print()
    for name, rows in results.items():
        single = [r for r in rows if r["clients"] == 1]
        if single:
            print(f"- {name} single-stream decode rate: {single[0]['decode_tok_s']:.1f} tok/s "
                  "(after the first token)")
    at8 = {name: next((r for r in rows if r["clients"] == 8), None) for name, rows in results.items()}
    if at8.get("qwen2") and at8.get("llama-cpp-python"):
        ratio = at8["qwen2"]["tok_s"] / at8["llama-cpp-python"]["tok_s"]
        print(f"- 8 clients: qwen2 / llama-cpp-python aggregate throughput = {ratio:.2f}x")
    print(f"- total bench time {time.time() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(a).items()}, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
