"""CPU cost of `bge serve`'s HTTP layer per request, apart from the engine and the sockets.

    python bench/probe_http.py                 # single-query POST /embed, 1 and 16 requests at a time

The app of `bge serve` (its Gate, routes, validation, batcher and JSON writing) answers ASGI requests
made in this process, with the engine replaced by a call that returns fixed vectors, so the figure is
the Python the HTTP process runs for a request beside uvicorn's parsing and the socket calls. With
--layout host (what `bge serve --workers N` runs), the engine calls go over the Unix socket to an
engine host process serving the same stand-in, and the figure includes this side of that exchange. The
direct routes are switched off and on in turns (same app, same process) and each setting is timed
several times; the table gives the median CPU µs per request. Metrics are kept in shared files, as in
a server of several processes (`--workers N`), unless --metrics-in-memory. Results: a table and
$OUT/probe_http.json.

    python bench/probe_http.py --served uvicorn granian   # whole server processes, over loopback

With --served, the same stand-in app runs in an ASGI server process of each kind named (installed ones),
loaded over 127.0.0.1 by `bench/serve.py`'s load generator (--clients at once, one process): the server
process's CPU per request (its HTTP parsing and sockets included), requests/s and the load generator's
CPU per request, median of --repeats runs.

    python bench/probe_http.py --hop            # an engine call's round trip through the engine host

With --hop, this process calls the engine host (serving the stand-in) as an HTTP process does, --at-once
runs at a time, and times each round trip: what the exchange between the processes adds to a request
(sockets, pickles, the host's threads), apart from HTTP and the engine. Median of --repeats runs of the
p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

if __name__ == "__main__" and "--metrics-in-memory" not in sys.argv:
    # prometheus_client picks its value store when imported
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="probe-http-metrics-")

from bge_server import ServerConfig, create_app  # noqa: E402
from bge_server.batcher import MicroBatcher  # noqa: E402
from bge_server.engine_host import HostClient, serve_calls  # noqa: E402
from bge_server.metrics import Metrics  # noqa: E402
from bge_server.models import EmbedRows, ModelSet, ServedEmbedder  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")


def stand_in_models(dim: int) -> ModelSet:
    """One embedding model whose engine call returns a fixed unit vector per input (no engine)."""
    vector = np.full(dim, 1 / np.sqrt(dim), dtype=np.float32)

    def run(key: Any, texts: list[str]) -> EmbedRows:
        return EmbedRows(len(texts), np.repeat(vector[None], len(texts), axis=0), None, None)

    handle = SimpleNamespace(family="dense", dtype="float32", device="cpu", max_length=512, dim=dim,
                             colbert_dim=None, spec=SimpleNamespace(pooling="cls"))
    batcher = MicroBatcher(run, max_items=512, name="bench", join=EmbedRows.join)
    served = ServedEmbedder("bench", "bench", handle, handle, batcher)  # type: ignore[arg-type]
    served.run = run  # type: ignore[method-assign]
    return ModelSet([served], [])


def served_app() -> Any:
    """The stand-in app, for an ASGI server's factory option (dimension from PROBE_HTTP_DIM)."""
    dim = int(os.environ.get("PROBE_HTTP_DIM", 1024))
    return create_app(ServerConfig(models=["bench"]), models=stand_in_models(dim))


def host_process(path: str, dim: int) -> None:
    """An engine host serving the stand-in model on `path` until its parent ends."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    parent = multiprocessing.parent_process()
    serve_calls(listener, {"bench": stand_in_models(dim).embedders[0]}, 512, stop=parent.sentinel)


def start_host(dim: int) -> tuple[Any, str]:
    """An engine host process serving the stand-in, and its socket path, once it listens."""
    path = os.path.join(tempfile.mkdtemp(prefix="probe-http-"), "engine.sock")
    host = multiprocessing.get_context("spawn").Process(target=host_process, args=(path, dim), daemon=True)
    host.start()
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if not host.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the engine host did not start (exit code {host.exitcode})")
        time.sleep(0.05)
    return host, path


async def hop(args: argparse.Namespace) -> dict[str, Any]:
    """p50 / p99 µs of `args.at_once` single-query runs sent together to the engine host, answered together."""
    host, path = start_host(args.dim)
    client = HostClient(path)
    await client.start()
    items = ["query number 1 about something"]
    results: dict[str, Any] = {}
    try:
        for _ in range(200):  # warm-up
            await client.run("bench", None, items)
        for at_once in args.at_once:
            runs = []
            for _ in range(args.repeats):
                times = []
                rounds = max(1, args.requests // at_once)
                cpu, host_cpu = time.process_time(), sum(serve.tree_cpu(host.pid).values())
                for _ in range(rounds):
                    start = time.perf_counter()
                    await asyncio.gather(*(client.run("bench", None, items) for _ in range(at_once)))
                    times.append(1e6 * (time.perf_counter() - start))
                cpu, host_cpu = time.process_time() - cpu, sum(serve.tree_cpu(host.pid).values()) - host_cpu
                times.sort()
                runs.append({"p50_us": times[len(times) // 2], "p99_us": times[int(0.99 * (len(times) - 1))],
                             "caller_cpu_us_per_run": 1e6 * cpu / (rounds * at_once),
                             "host_cpu_us_per_run": 1e6 * host_cpu / (rounds * at_once)})
            results[f"x{at_once}"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    finally:
        await client.stop()
        host.terminate()
    return results


def app_of(args: argparse.Namespace) -> tuple[Any, Any]:
    """The app under test, and the engine host process (None when the engine runs in this process)."""
    config = ServerConfig(models=["bench"])
    if args.layout == "process":
        return create_app(config, models=stand_in_models(args.dim)), None
    host, path = start_host(args.dim)
    client = HostClient(path)
    app = create_app(config, models=ModelSet.remote(config, client, Metrics()))
    return app, (host, client)


async def post(app: Any, path: str, body: bytes) -> int:
    """One POST through the ASGI app, as uvicorn would make it; the response status."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080)}
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # the client stays connected
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def measure(app: Any, path: str, bodies: list[bytes], at_once: int,
                  host_pid: int | None = None) -> tuple[float, float, float | None]:
    """(CPU µs per request here, requests/s, the engine host's CPU µs per request) for `bodies` sent
    `at_once` at a time."""
    host_cpu = None if host_pid is None else sum(serve.tree_cpu(host_pid).values())
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, len(bodies), at_once):
        statuses = await asyncio.gather(*(post(app, path, b) for b in bodies[start : start + at_once]))
        assert all(s == 200 for s in statuses), statuses
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if host_pid is not None:
        host_cpu = 1e6 * (sum(serve.tree_cpu(host_pid).values()) - host_cpu) / len(bodies)
    return 1e6 * cpu / len(bodies), len(bodies) / wall, host_cpu


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    app, host = app_of(args)
    if host is not None:
        await host[1].start()
    direct = app.gate.direct
    bodies = [json.dumps({"inputs": f"query number {i} about something"}).encode() for i in range(args.requests)]
    rows: dict[str, dict[str, list[float]]] = {}
    async with app.router.lifespan_context(app):
        await measure(app, "/embed", bodies[:200], 1)  # warm-up
        for _ in range(args.repeats):
            for setting in ("FastAPI", "direct"):
                app.gate.direct = direct if setting == "direct" else None
                for at_once in args.at_once:
                    cpu_us, rate, host_us = await measure(app, "/embed", bodies, at_once,
                                                          None if host is None else host[0].pid)
                    row = rows.setdefault(f"{setting} x{at_once}", {"cpu_us": [], "requests_s": [], "host_cpu_us": []})
                    row["cpu_us"].append(cpu_us)
                    row["requests_s"].append(rate)
                    if host_us is not None:
                        row["host_cpu_us"].append(host_us)
    if host is not None:
        await host[1].stop()
        host[0].terminate()
    return {name: {k: statistics.median(v) for k, v in row.items() if v} for name, row in rows.items()}


SERVERS = {
    "uvicorn": ["-m", "uvicorn", "probe_http:served_app", "--factory", "--log-level", "warning", "--no-access-log",
                "--port"],
    "granian": ["-m", "granian", "--interface", "asgi", "--factory", "--log-level", "warning", "--no-ws",
                "--loop", "uvloop", "probe_http:served_app", "--port"],
}


def served(args: argparse.Namespace) -> dict[str, Any]:
    """Each ASGI server of `args.served` serving the stand-in app, under `args.clients` loopback clients."""
    import httpx

    here = os.path.dirname(os.path.abspath(__file__))
    queries = [[f"query number {i} about something"] for i in range(args.requests)]
    results: dict[str, Any] = {}
    for name in args.served:
        port = serve.free_port()
        env = {**os.environ, "PROBE_HTTP_DIM": str(args.dim), "PYTHONPATH": os.pathsep.join(
            [here, os.environ.get("PYTHONPATH", "")])}
        process = subprocess.Popen([sys.executable, *SERVERS[name], str(port)], cwd=here, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.post(url + "/embed", json={"inputs": "warm-up"}, timeout=5).raise_for_status()
                    break
                except httpx.HTTPError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{name} did not serve the stand-in app") from None
                    time.sleep(0.2)
            runs = []
            for _ in range(args.repeats):
                before = sum(serve.tree_cpu(process.pid).values())
                measured = serve.load(url, "/embed", "inputs", queries, args.clients, processes=1)
                cpu = sum(serve.tree_cpu(process.pid).values()) - before
                runs.append({"cpu_us": 1e6 * cpu / measured["requests"], "requests_s": measured["texts_s"],
                             "client_cpu_us": measured["client_cpu_us_per_request"]})
            results[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        finally:
            process.terminate()
            process.wait(30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--at-once", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layout", choices=["process", "host"], default="process",
                        help="engine calls on threads of this process, or in an engine host process")
    parser.add_argument("--metrics-in-memory", action="store_true", help="as a server of one process")
    parser.add_argument("--served", nargs="*", choices=sorted(SERVERS), help="whole server processes instead")
    parser.add_argument("--clients", type=int, default=16, help="loopback clients with --served")
    parser.add_argument("--hop", action="store_true", help="round trips to the engine host instead")
    args = parser.parse_args()
    if args.hop:
        import uvloop  # as uvicorn runs an HTTP process's loop

        results = uvloop.run(hop(args))
        for name, row in results.items():
            print(f"{name:5} p50 {row['p50_us']:8.1f} µs  p99 {row['p99_us']:8.1f} µs  CPU µs a run: caller "
                  f"{row['caller_cpu_us_per_run']:6.1f}, engine host {row['host_cpu_us_per_run']:6.1f}")
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "probe_http_hop.json"), "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
        return
    if args.served:
        results = served(args)
        print(f"{'server':10} {'server CPU µs/request':>22} {'requests/s':>11} {'load generator µs/request':>26}")
        for name, row in results.items():
            print(f"{name:10} {row['cpu_us']:22.1f} {row['requests_s']:11.0f} {row['client_cpu_us']:26.1f}")
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "probe_http_served.json"), "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
        return
    results = asyncio.run(main_async(args))
    print(f"{'setting':14} {'CPU µs/request':>15} {'requests/s':>11} {'engine host µs/request':>23}")
    for name, row in results.items():
        host_us = f"{row['host_cpu_us']:23.1f}" if "host_cpu_us" in row else ""
        print(f"{name:14} {row['cpu_us']:15.1f} {row['requests_s']:11.0f} {host_us}")
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "probe_http.json"), "w") as f:
        json.dump({"args": vars(args), "metrics_files": "PROMETHEUS_MULTIPROC_DIR" in os.environ,
                   "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
