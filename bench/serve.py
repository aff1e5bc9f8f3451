"""`bge serve` under bounded client load on loopback, against the in-process engine (and infinity-emb).

    python bench/serve.py --device cuda:0                  # one GPU: bge-m3 architecture, fp16
    python bench/serve.py --device cpu --quick             # a minute on a laptop CPU: tiny BGE-M3
    python bench/serve.py --device cuda:0 --infinity /opt/venv-infinity/bin/python   # + infinity-emb

For 1, 16 and 64 concurrent clients, each client sends its requests one after another (single queries,
then 32-text batches) to POST /embed; the table gives texts/s over the whole run and p50/p99 latency per
request. The in-process row encodes the same texts with `Embedder.encode` in one call (throughput) and one
query at a time (latency). With --infinity PYTHON, infinity-emb serves the same checkpoint as a second
server (POST /embeddings) under the same load. Everything stays on 127.0.0.1 and every loop is bounded
in count and time. Results: a table on stdout and $OUT/serve_bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as W  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
CK = os.environ.get("BENCH_CHECKPOINTS", "/tmp/bge-bench")
LISTENING = re.compile(r"listening on (http://\S+)")
#: No single measurement may run longer than this (a bounded load generator).
SCENARIO_LIMIT_S = 120.0


def checkpoint(quick: bool) -> str:
    if quick:
        from bge_core.tiny import tiny_m3

        return tiny_m3(W.corpus(200, 4, 60, 12, 0.5, 7))
    return W.build_m3(f"{CK}/m3")


def start_bge(model: str, device: str, dtype: str | None) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "bge_cli", "serve", "--model", model, "--served-model-name", "bench",
               "--port", "0", "--device", device, "--max-concurrent-requests", "4096"]
    if dtype:
        command += ["--dtype", dtype]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    deadline = time.time() + 600
    for line in process.stdout:
        match = LISTENING.search(line)
        if match:
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # keep draining
            return process, match.group(1)
        if time.time() > deadline:
            break
    process.kill()
    raise RuntimeError("bge serve did not start")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_infinity(python: str, model: str, device: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = os.path.join(os.path.dirname(python), "infinity_emb")
    command = [exe if os.path.exists(exe) else shutil.which("infinity_emb") or exe, "v2", "--model-id", model,
               "--served-model-name", "bench", "--port", str(port), "--host", "127.0.0.1",
               "--device", "cuda" if device.startswith("cuda") else "cpu", "--engine", "torch", "--no-model-warmup"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    raise RuntimeError(f"infinity_emb did not start ({' '.join(command)})")


def load(url: str, path: str, field: str, batches: list[list[str]], clients: int) -> dict[str, Any]:
    """`clients` concurrent clients share `batches` (one request each, in order); bounded by SCENARIO_LIMIT_S."""

    async def run() -> tuple[list[float], float, int]:
        queue: asyncio.Queue[list[str]] = asyncio.Queue()
        for batch in batches:
            queue.put_nowait(batch)
        latencies: list[float] = []
        sent = 0
        deadline = time.perf_counter() + SCENARIO_LIMIT_S

        async def client(http: httpx.AsyncClient) -> None:
            nonlocal sent
            while not queue.empty() and time.perf_counter() < deadline:
                batch = queue.get_nowait()
                body: dict[str, Any] = {field: batch}
                if field == "input":
                    body["model"] = "bench"
                start = time.perf_counter()
                response = await http.post(path, json=body)
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()
                sent += len(batch)

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
            await http.post(path, json={field: batches[0], **({"model": "bench"} if field == "input" else {})})
            start = time.perf_counter()
            await asyncio.gather(*(client(http) for _ in range(clients)))
            return latencies, time.perf_counter() - start, sent

    latencies, seconds, sent = asyncio.run(run())
    ordered = sorted(latencies)
    return {"texts_s": sent / seconds, "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], "requests": len(ordered)}


def in_process(model: str, device: str, dtype: str | None, singles: list[str], batched: list[list[str]]) -> dict:
    import torch

    from bge_core import Embedder

    embedder = Embedder(model, device=device, dtype=dtype, reuse_outputs=False)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    embedder.encode(singles[:64])
    out: dict[str, Any] = {}
    for name, texts in (("single", singles), ("batch32", [t for b in batched for t in b])):
        sync()
        start = time.perf_counter()
        embedder.encode(texts)
        sync()
        out[f"{name}_texts_s"] = len(texts) / (time.perf_counter() - start)
    latencies = []
    for text in singles[:200]:
        start = time.perf_counter()
        embedder.encode([text])
        sync()
        latencies.append(time.perf_counter() - start)
    out["single_p50_ms"] = 1000 * statistics.median(latencies)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--dtype", default=None, help="fp16 / bf16 / fp32 (default: the engine's per device)")
    parser.add_argument("--quick", action="store_true", help="tiny BGE-M3 and few requests (CPU smoke run)")
    parser.add_argument("--model", help="checkpoint directory (default: random bge-m3 architecture, or tiny)")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--singles", type=int, default=None, help="single-query requests per scenario")
    parser.add_argument("--batches", type=int, default=None, help="32-text requests per scenario")
    parser.add_argument("--infinity", default=None, help="python of a venv with infinity-emb[server]")
    args = parser.parse_args()

    model = args.model or checkpoint(args.quick)
    n_single = args.singles or (256 if args.quick else 4096)
    n_batch = args.batches or (32 if args.quick else 512)
    queries = W.corpus(n_single, 4, 40, 10, 0.4, 11)
    passages = W.corpus(n_batch * 32, 8, 256 if args.quick else 510, 60 if args.quick else 90, 0.6, 12)
    batched = [passages[i : i + 32] for i in range(0, len(passages), 32)]
    clients = [int(c) for c in args.clients.split(",")]

    rows: list[dict[str, Any]] = []
    engine = in_process(model, args.device, args.dtype, queries, batched)
    rows.append({"system": "in-process Embedder", "workload": "single", "clients": "-",
                 "texts_s": engine["single_texts_s"], "p50_ms": engine["single_p50_ms"], "p99_ms": None})
    rows.append({"system": "in-process Embedder", "workload": "batch32", "clients": "-",
                 "texts_s": engine["batch32_texts_s"], "p50_ms": None, "p99_ms": None})

    servers = [("bge serve", start_bge(model, args.device, args.dtype), "/embed", "inputs")]
    python = args.infinity or ("/work/venv-infinity/bin/python" if os.path.exists("/work/venv-infinity/bin/python")
                               else None)
    if python:
        try:
            servers.append(("infinity-emb", start_infinity(python, model, args.device), "/embeddings", "input"))
        except (RuntimeError, OSError) as error:
            print(f"infinity-emb not measured: {error}", file=sys.stderr)
    try:
        for name, (_, url), path, field in servers:
            for count in clients:
                single = load(url, path, field, [[q] for q in queries], count)
                rows.append({"system": name, "workload": "single", "clients": count, **single})
                batch = load(url, path, field, batched, count)
                rows.append({"system": name, "workload": "batch32", "clients": count, **batch})
    finally:
        for _, (process, _), _, _ in servers:
            process.terminate()
            process.wait(60)

    def ratio(row: dict[str, Any]) -> str:
        base = engine["single_texts_s" if row["workload"] == "single" else "batch32_texts_s"]
        return f"{row['texts_s'] / base:.2f}"

    print(f"\nbge serve bench: model {model}, device {args.device}, dtype {args.dtype or 'default'}")
    print(f"{'system':22} {'workload':8} {'clients':>7} {'texts/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'vs engine':>9}")
    for row in rows:
        fmt = lambda v: f"{v:8.2f}" if isinstance(v, float) else f"{'':8}"  # noqa: E731
        print(f"{row['system']:22} {row['workload']:8} {row['clients']!s:>7} {row['texts_s']:10.1f} "
              f"{fmt(row['p50_ms'])} {fmt(row['p99_ms'])} {ratio(row):>9}")
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "serve_bench.json"), "w") as f:
        json.dump({"model": model, "device": args.device, "dtype": args.dtype, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
