"""`bge serve` under bounded client load on loopback, against the in-process engine (and infinity-emb).

    python bench/serve.py --device cuda:0                  # one GPU: bge-m3 architecture, fp16
    python bench/serve.py --device cpu --quick             # a minute on a laptop CPU: tiny BGE-M3
    python bench/serve.py --device cuda:0 --infinity /opt/venv-infinity/bin/python   # + infinity-emb

For 1, 16 and 64 concurrent clients, each client sends its requests one after another (single queries,
then 32-text batches) to POST /embed; the table gives texts/s over the whole run and p50/p99 latency per
request. The in-process row encodes the same texts with `Embedder.encode` in one call (throughput) and one
query at a time (latency); it also times calls of 4, 16 and 64 queries, what a loaded server's calls
hold, and 64 closed-loop clients merged by the server's own `MicroBatcher` in this process ("in-process
batcher": the server without HTTP, the most any server on this engine answers such clients). With
--infinity PYTHON, infinity-emb serves the same checkpoint as a second server (POST
/embeddings) under the same load. Everything stays on 127.0.0.1 and every loop is bounded in count and time.
Results: a table on stdout and $OUT/serve_bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
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
#: The last lines each `bge serve` process printed, by pid (shown when a measurement fails).
SERVER_OUTPUT: dict[int, collections.deque] = {}
#: No single measurement may run longer than this (a bounded load generator).
SCENARIO_LIMIT_S = 120.0


def checkpoint(quick: bool) -> str:
    if quick:
        from bge_core.tiny import tiny_m3

        return tiny_m3(W.corpus(200, 4, 60, 12, 0.5, 7))
    return W.build_m3(f"{CK}/m3")


def start_bge(model: str, device: str, dtype: str | None, extra: list[str] = ()) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "bge_cli", "serve", "--model", model, "--served-model-name", "bench",
               "--port", "0", "--device", device, "--max-concurrent-requests", "4096", *extra]
    if dtype:
        command += ["--dtype", dtype]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    deadline = time.time() + 600
    for line in process.stdout:
        match = LISTENING.search(line)
        if match:
            tail = SERVER_OUTPUT.setdefault(process.pid, collections.deque(maxlen=40))
            threading.Thread(target=lambda: tail.extend(process.stdout), daemon=True).start()  # keep draining
            return process, match.group(1)
        if time.time() > deadline:
            break
    process.kill()
    raise RuntimeError("bge serve did not start")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def infinity_checkpoint(model: str) -> str:
    """A copy of `model` that infinity-emb's transformers 4 / sentence-transformers load: the tokenizer class
    transformers 5 writes is renamed, and a sentence-transformers CLS-pooling + normalize pipeline is added
    (BGE's pooling) so both servers compute the same thing."""
    target = model.rstrip("/") + "-infinity"
    os.makedirs(os.path.join(target, "1_Pooling"), exist_ok=True)
    for name in os.listdir(model):
        source, dest = os.path.join(model, name), os.path.join(target, name)
        if os.path.isfile(source) and not os.path.exists(dest):
            os.symlink(source, dest)
    config_path = os.path.join(target, "tokenizer_config.json")
    with open(os.path.join(model, "tokenizer_config.json")) as f:
        config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if os.path.islink(config_path):
        os.unlink(config_path)
    with open(config_path, "w") as f:
        json.dump(config, f)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    with open(os.path.join(target, "modules.json"), "w") as f:
        json.dump(modules, f)
    with open(os.path.join(model, "config.json")) as f:
        hidden = json.load(f)["hidden_size"]
    with open(os.path.join(target, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": hidden, "pooling_mode_cls_token": True,
                   "pooling_mode_mean_tokens": False}, f)
    return target


def start_infinity(python: str, model: str, device: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    model = infinity_checkpoint(model)
    exe = os.path.join(os.path.dirname(python), "infinity_emb")
    command = [exe if os.path.exists(exe) else shutil.which("infinity_emb") or exe, "v2", "--model-id", model,
               "--served-model-name", "bench", "--port", str(port), "--host", "127.0.0.1",
               "--device", "cuda" if device.startswith("cuda") else "cpu", "--engine", "torch", "--no-model-warmup"]
    os.makedirs(OUT, exist_ok=True)
    log_path = os.path.join(OUT, "infinity.log")
    with open(log_path, "w") as log:
        # No telemetry: a benchmark host may have no network, and a send that waits on DNS is not its speed.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "DO_NOT_TRACK": "1"})
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
    with open(log_path, errors="replace") as log:
        tail = log.read()[-2000:]
    raise RuntimeError(f"infinity_emb did not start ({' '.join(command)}):\n{tail}")


def load(url: str, path: str, field: str, batches: list[list[str]], clients: int,
         processes: int = 8, on_start: Any = None, min_seconds: float = 0.0) -> dict[str, Any]:
    """`clients` concurrent clients share `batches` (one request each, in order), sent again from the first
    while less than `min_seconds` have passed (a scenario that lasts under a second measures its start and
    end more than the server); bounded by SCENARIO_LIMIT_S.

    The clients run in up to `processes` load-generator processes (asyncio each, uvloop where installed,
    raw keep-alive HTTP/1.1), so that one generator's Python is not the ceiling of what is measured.
    Throughput counts from the common start to the last answer; `on_start()` is called at that start."""
    processes = max(1, min(processes, clients, len(batches)))  # no generator without a request to send
    shares = [batches[i::processes] for i in range(processes)]
    per_process = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    spawn = multiprocessing.get_context("spawn")
    start_at = spawn.Value("d", 0.0)
    ready = spawn.Barrier(processes + 1)
    answers = spawn.Queue()
    workers = [spawn.Process(target=_load_process,
                             args=(url, path, field, share, n, ready, start_at, answers, min_seconds))
               for share, n in zip(shares, per_process)]
    for worker in workers:
        worker.start()
    try:
        ready.wait(180)  # every generator connected and warmed up
        start_at.value = time.perf_counter() + 0.05
        if on_start is not None:
            on_start()
        results = [answers.get(timeout=SCENARIO_LIMIT_S + 120) for _ in workers]
        failed = [r for r in results if isinstance(r, str)]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(workers)} load generators failed: {failed[0]}")
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
    latencies = sorted(x for lat, _, _, _ in results for x in lat)
    sent = sum(n for _, n, _, _ in results)
    seconds = max(end for _, _, end, _ in results) - start_at.value
    client_cpu = sum(cpu for _, _, _, cpu in results)
    return {"texts_s": sent / seconds, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "requests": len(latencies), "client_cpu_us_per_request": round(1e6 * client_cpu / len(latencies), 1)}


def _load_process(url: str, path: str, field: str, batches: list[list[str]], clients: int, ready: Any,
                  start_at: Any, answers: Any, min_seconds: float = 0.0) -> None:
    """One load-generator process: `clients` coroutines share `batches` (again from the first until
    `min_seconds` have passed); puts (latencies, texts, end, CPU seconds)."""

    def body_of(batch: list[str]) -> dict[str, Any]:
        return {field: batch, "model": "bench"} if field == "input" else {field: batch}

    async def run() -> tuple[list[float], int, float]:
        queue: asyncio.Queue[list[str]] = asyncio.Queue()
        for batch in batches:
            queue.put_nowait(batch)
        latencies: list[float] = []
        sent = 0
        post = await _poster(url, path, clients)

        async def client() -> None:
            nonlocal sent
            while time.perf_counter() < deadline:
                if queue.empty():
                    if time.perf_counter() >= again_until:
                        return
                    for batch in batches:
                        queue.put_nowait(batch)
                batch = queue.get_nowait()
                start = time.perf_counter()
                await post(body_of(batch))
                latencies.append(time.perf_counter() - start)
                sent += len(batch)

        try:
            await asyncio.gather(*(post(body_of(batches[0])) for _ in range(clients)))  # connections, warm-up
            await asyncio.get_running_loop().run_in_executor(None, ready.wait, 120)
            while time.perf_counter() < start_at.value:
                await asyncio.sleep(0.001)
            deadline = time.perf_counter() + SCENARIO_LIMIT_S
            again_until = time.perf_counter() + min_seconds
            cpu_at_start = time.process_time()  # this load generator's own cost, reported beside the server's
            await asyncio.gather(*(client() for _ in range(clients)))
            return latencies, sent, time.perf_counter(), time.process_time() - cpu_at_start
        finally:
            await post(None)

    try:
        import uvloop
    except ImportError:
        uvloop = asyncio
    try:
        answers.put(uvloop.run(run()))
    except BaseException as error:  # the parent stops waiting at once and shows why
        answers.put(f"{type(error).__name__}: {error}")
        raise


async def _poster(url: str, path: str, clients: int) -> Any:
    """An async `post(body)` (raising on a non-200 answer); `post(None)` closes its connections.

    Each concurrent post holds one keep-alive HTTP/1.1 connection of a pool (at most `clients`), written
    and read with asyncio streams: a client library's own work (aiohttp cost 260-360 µs of CPU per
    single-query request on the H200 host) would otherwise take the cores the server under test needs."""
    host, _, port = url.removeprefix("http://").partition(":")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened: list[asyncio.StreamWriter] = []

    async def exchange(request: bytes, fresh: bool = False) -> tuple[int, bytes]:
        reader, writer = idle.pop() if idle and not fresh else await connect()
        try:
            writer.write(request)
            header = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", header)
            if length is None:
                raise RuntimeError(f"{path}: an answer without Content-Length ({header[:200]!r})")
            answer = await reader.readexactly(int(length.group(1)))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            raise
        idle.append((reader, writer))
        return int(header[9:12]), answer

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, int(port))
        opened.append(writer)
        return reader, writer

    async def post(body: dict[str, Any] | None) -> None:
        if body is None:
            for writer in opened:
                writer.close()
            return
        data = json.dumps(body).encode()
        request = f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data
        try:
            status, answer = await exchange(request)
        except (asyncio.IncompleteReadError, ConnectionError):
            # The server closed a keep-alive connection that sat idle past its timeout (uvicorn: 5 s), as
            # while the other load generators start: once more, on a new connection.
            status, answer = await exchange(request, fresh=True)
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}: {answer[:200]!r}")

    return post


FIGURES = ("te_batch_next_size_sum", "te_batch_next_size_count", "te_request_inference_duration_sum",
           "te_request_inference_duration_count", "te_request_tokenization_duration_sum",
           "te_request_queue_duration_sum", "te_request_queue_duration_count", "te_request_duration_sum",
           "te_request_duration_count", "bge_engine_batch_size_sum", "bge_engine_batch_size_count",
           "bge_engine_call_duration_sum")


def server_figures(url: str) -> dict[str, float]:
    """The sums and counts of `bge serve`'s histograms that tell where a request's time goes."""
    text = httpx.get(url + "/metrics", timeout=30).text
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in FIGURES:
            found[name] = float(value)
    return found


def figures_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Engine calls, mean inputs per call, a request's mean time in its engine call (tokenizing included) /
    queued / in all (ms) in one scenario; with an engine host, also its own (merged) calls: count, mean inputs
    and time (ms)."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in FIGURES}
    calls = max(d["te_batch_next_size_count"], 1.0)
    in_call = d["te_request_inference_duration_sum"] + d["te_request_tokenization_duration_sum"]
    found = {"engine_calls": d["te_batch_next_size_count"], "inputs_per_call": d["te_batch_next_size_sum"] / calls,
             "call_ms": 1000 * in_call / max(d["te_request_inference_duration_count"], 1.0),
             "queue_ms": 1000 * d["te_request_queue_duration_sum"] / max(d["te_request_queue_duration_count"], 1.0),
             "request_ms": 1000 * d["te_request_duration_sum"] / max(d["te_request_duration_count"], 1.0)}
    host_calls = d["bge_engine_batch_size_count"]
    if host_calls:
        found.update(host_calls=host_calls, inputs_per_host_call=d["bge_engine_batch_size_sum"] / host_calls,
                     host_call_ms=1000 * d["bge_engine_call_duration_sum"] / host_calls)
    return found


def process_tree(pid: int) -> list[tuple[int, str, float]]:
    """(pid, name, CPU seconds: user + system) of process `pid` and its descendants (`bge serve` names
    its processes bge-http and bge-engine)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/stat") as f:
                stat = f.read()
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo += [int(child) for child in f.read().split()]
        except OSError:
            continue  # it ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        found.append((current, name, (int(fields[11]) + int(fields[12])) / tick))
    return found


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of process `pid` and its descendants, summed per process name."""
    found: dict[str, float] = {}
    for _, name, cpu in process_tree(pid):
        found[name] = found.get(name, 0.0) + cpu
    return found


def profile_later(py_spy: str, pid: int, seconds: float) -> Any:
    """An `on_start` for `load`: py-spy samples the engine host (all threads, and the thread holding the
    GIL) and one HTTP process of server `pid` for `seconds`; raw stacks go to $OUT/profile-*.txt."""

    def record(target: int, label: str, extra: list[str]) -> None:
        subprocess.run([py_spy, "record", "--pid", str(target), "--duration", str(int(seconds)), "--rate", "400",
                        "--format", "raw", "--output", os.path.join(OUT, f"profile-{label}.txt"), "--nonblocking",
                        *extra], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, check=False)

    def start() -> None:
        tree = process_tree(pid)
        print("py-spy on " + ", ".join(f"{name} {p}" for p, name, _ in tree), flush=True)
        targets = [(p, "engine-threads", ["--threads"]) for p, name, _ in tree if name == "bge-engine"]
        targets += [(p, "engine-gil", ["--gil"]) for p, name, _ in tree if name == "bge-engine"]
        targets += [(p, "http", []) for p, name, _ in tree if name == "bge-http"][:1]
        for target, label, extra in targets:
            threading.Thread(target=record, args=(target, label, extra), daemon=True).start()

    return start


def in_process(model: str, device: str, dtype: str | None, singles: list[str], batched: list[list[str]]) -> dict:
    import torch

    from bge_core import Embedder

    embedder = Embedder(model, device=device, dtype=dtype, reuse_outputs=False)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    embedder.encode(singles[:64])
    out: dict[str, Any] = {}
    for name, texts in (("single", singles), ("batch32", [t for b in batched for t in b])):
        best = float("inf")
        for _ in range(3):  # best of three: the engine's ceiling, less exposed to a busy machine
            sync()
            start = time.perf_counter()
            embedder.encode(texts)
            sync()
            best = min(best, time.perf_counter() - start)
        out[f"{name}_texts_s"] = len(texts) / best
    latencies = []
    for text in singles[:200]:
        start = time.perf_counter()
        embedder.encode([text])
        sync()
        latencies.append(time.perf_counter() - start)
    out["single_p50_ms"] = 1000 * statistics.median(latencies)
    # What one engine call of k merged queries costs (a server under load makes such calls).
    for k in (4, 16, 64):
        calls = []
        for start in range(0, min(len(singles), 50 * k) - k + 1, k):
            begin = time.perf_counter()
            embedder.encode(singles[start : start + k])
            sync()
            calls.append(time.perf_counter() - begin)
        out[f"call_of_{k}_p50_ms"] = 1000 * statistics.median(calls)
    # The server without HTTP: closed-loop clients merged by the server's own batcher in this process,
    # the most any server on this engine can answer them (without and with rejoin_wait).
    for rejoin in (0.0, 0.25):
        figures = asyncio.run(closed_loop(embedder, singles, 64, rejoin))
        out.update({f"closed_loop_64_rejoin_{rejoin:g}_{k}": v for k, v in figures.items()})
    print("in-process engine: " + ", ".join(f"{k} {v:.4g}" for k, v in out.items()), flush=True)
    return out


async def closed_loop(embedder: Any, queries: list[str], clients: int, rejoin_wait: float) -> dict[str, float]:
    """`clients` tasks each sending its single queries one after another through a `MicroBatcher` over
    `embedder` (as `bge serve` merges them, two engine calls in flight): texts/s and inputs per call."""
    from bge_server.batcher import MicroBatcher

    calls: list[int] = []

    def run(key: Any, texts: list[str]) -> list[Any]:
        calls.append(len(texts))
        return list(embedder.encode(texts).dense)

    batcher = MicroBatcher(run, max_items=1024, rejoin_wait=rejoin_wait)
    await batcher.start()
    shares = [queries[i::clients] for i in range(clients)]

    async def client(share: list[str]) -> None:
        for text in share:
            await batcher.submit("dense", [text])

    try:
        await asyncio.gather(*(client(share[:8]) for share in shares))  # warm-up
        calls.clear()
        start = time.perf_counter()
        await asyncio.gather(*(client(share) for share in shares))
        seconds = time.perf_counter() - start
    finally:
        await batcher.stop()
    return {"texts_s": len(queries) / seconds, "inputs_per_call": len(queries) / max(len(calls), 1)}


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
    parser.add_argument("--infinity-clients", default=None, help="client counts for infinity-emb (default: --clients; "
                        "one infinity-emb client takes minutes over thousands of queries)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `bge serve` argument (repeatable)")
    parser.add_argument("--profile", type=float, default=0, help="py-spy the server for this many seconds of "
                        "the busiest single-query scenario (needs py-spy)")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="each scenario sends its requests again "
                        "until it has run this long (0: once)")
    parser.add_argument("--load-processes", type=int, default=8, help="load-generator processes (at most one per "
                        "client)")
    args = parser.parse_args()
    environment = W.run_environment()

    model = args.model or checkpoint(args.quick)
    n_single = args.singles or (256 if args.quick else 4096)
    n_batch = args.batches or (32 if args.quick else 512)
    queries = W.corpus(n_single, 4, 40, 10, 0.4, 11)
    passages = W.corpus(n_batch * 32, 8, 256 if args.quick else 510, 60 if args.quick else 90, 0.6, 12)
    batched = [passages[i : i + 32] for i in range(0, len(passages), 32)]
    clients = [int(c) for c in args.clients.split(",")]
    infinity_clients = [int(c) for c in (args.infinity_clients or args.clients).split(",")]

    rows: list[dict[str, Any]] = []
    engine = in_process(model, args.device, args.dtype, queries, batched)
    rows.append({"system": "in-process Embedder", "workload": "single", "clients": "-",
                 "texts_s": engine["single_texts_s"], "p50_ms": engine["single_p50_ms"], "p99_ms": None})
    rows.append({"system": "in-process Embedder", "workload": "batch32", "clients": "-",
                 "texts_s": engine["batch32_texts_s"], "p50_ms": None, "p99_ms": None})
    for rejoin in (0.0, 0.25):
        rows.append({"system": f"in-process batcher{' rejoin' if rejoin else ''}", "workload": "single",
                     "clients": 64, "texts_s": engine[f"closed_loop_64_rejoin_{rejoin:g}_texts_s"],
                     "p50_ms": None, "p99_ms": None})

    servers = [("bge serve", start_bge(model, args.device, args.dtype, args.server_arg), "/embed", "inputs")]
    python = args.infinity or ("/work/venv-infinity/bin/python" if os.path.exists("/work/venv-infinity/bin/python")
                               else None)
    if python:
        try:
            servers.append(("infinity-emb", start_infinity(python, model, args.device), "/embeddings", "input"))
        except (RuntimeError, OSError) as error:
            print(f"infinity-emb not measured: {error}", file=sys.stderr)
    try:
        if len(servers) == 2:  # both servers compute the same vectors (CLS pooling, normalised)
            probe = queries[:4]
            ours = httpx.post(servers[0][1][1] + "/embed", json={"inputs": probe}, timeout=60).json()
            theirs = httpx.post(servers[1][1][1] + "/embeddings", json={"input": probe, "model": "bench"},
                                timeout=60).json()["data"]
            cos = min(sum(a * b for a, b in zip(x, y["embedding"])) for x, y in zip(ours, theirs))
            print(f"bge serve vs infinity-emb vectors: min cosine {cos:.5f}")
        for name, (process, url), path, field in servers:
            for count in (clients if name == "bge serve" else infinity_clients):
                for workload, work in (("single", [[q] for q in queries]), ("batch32", batched)):
                    before = server_figures(url) if name == "bge serve" else {}
                    cpu_before = tree_cpu(process.pid)
                    profile = (profile_later(args.py_spy, process.pid, args.profile) if args.profile and
                               name == "bge serve" and workload == "single" and count == max(clients) else None)
                    try:
                        measured = load(url, path, field, work, count, args.load_processes, profile,
                                        args.min_seconds)
                    except Exception:
                        print(f"{name} {workload} x{count} failed; the server's last lines:\n"
                              + "".join(SERVER_OUTPUT.get(process.pid, ())), file=sys.stderr, flush=True)
                        raise
                    cpu = {k: v - cpu_before.get(k, 0.0) for k, v in tree_cpu(process.pid).items()}
                    # CPU of the server's processes per request answered, by process name (µs)
                    measured["cpu_us_per_request"] = {k: round(1e6 * v / measured["requests"], 1)
                                                      for k, v in sorted(cpu.items()) if v > 0}
                    if before:  # where the server's time went during this scenario, from its /metrics
                        measured["server"] = figures_between(before, server_figures(url))
                        print(f"{name} {workload} x{count}: {measured['texts_s']:.0f} texts/s; server: "
                              + ", ".join(f"{k} {v:.3g}" for k, v in measured["server"].items())
                              + f"; CPU µs/request {measured['cpu_us_per_request']} (load generator "
                              f"{measured['client_cpu_us_per_request']})", flush=True)
                    rows.append({"system": name, "workload": workload, "clients": count, **measured})
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
        json.dump({"model": model, "device": args.device, "dtype": args.dtype, "environment": environment,
                   "in_process": engine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
