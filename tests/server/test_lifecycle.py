"""Many clients at once, clients that leave, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
from urllib.parse import urlparse

import httpx
import numpy as np

from bge_core import Embedder, Reranker
from tests.server.conftest import Server, start_server
from tests.server.test_parity import cosines

CLIENTS = 64


def metric(server: Server, name: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_64_concurrent_clients_get_exactly_their_own_results(server: Server, m3: Embedder, dense: Embedder,
                                                             reranker: Reranker) -> None:
    """Each client sends its own texts (1–3 of them) to /embed, /v1/embeddings or /rerank, three rounds;
    every answer must equal the in-process result of exactly those texts, and requests must have been
    merged into shared engine calls."""
    batches_before = metric(server, "te_batch_next_size_count")

    def texts_of(client: int, round_: int) -> list[str]:
        return [f"client {client} round {round_} item {j}: pandas eat bamboo {client * j}"
                for j in range(1 + client % 3)]

    async def one_client(http: httpx.AsyncClient, client: int) -> list[tuple[str, list[str], object]]:
        seen = []
        for round_ in range(3):
            texts = texts_of(client, round_)
            kind = ("embed", "openai", "rerank")[(client + round_) % 3]
            if kind == "embed":
                response = await http.post("/embed", json={"inputs": texts, "model": "bge-small"})
                seen.append((kind, texts, response.json()))
            elif kind == "openai":
                response = await http.post("/v1/embeddings", json={"input": texts, "model": "bge-m3"})
                seen.append((kind, texts, [d["embedding"] for d in response.json()["data"]]))
            else:
                response = await http.post("/rerank", json={"query": texts[0], "texts": texts})
                seen.append((kind, texts, response.json()))
            assert response.status_code == 200, response.text
        return seen

    async def run_all() -> list[list[tuple[str, list[str], object]]]:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
            return await asyncio.gather(*(one_client(http, c) for c in range(CLIENTS)))

    answers = asyncio.run(run_all())
    for seen in answers:
        for kind, texts, got in seen:
            if kind == "embed":
                assert cosines(np.asarray(got), dense.encode(texts).dense).min() >= 0.99999
            elif kind == "openai":
                assert cosines(np.asarray(got), m3.encode(texts).dense).min() >= 0.99999
            else:
                expected = reranker.score([(texts[0], t) for t in texts], normalize=True)
                assert sorted(item["index"] for item in got) == list(range(len(texts)))
                for item in got:
                    assert abs(item["score"] - float(expected[item["index"]])) <= 1e-5
    engine_calls = metric(server, "te_batch_next_size_count") - batches_before
    assert engine_calls < CLIENTS * 3  # continuous batching: requests shared engine calls


def _send_and_leave(url: str, body: bytes) -> None:
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as raw:
        raw.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.2)  # the request is queued behind the busy engine; then the client hangs up


def test_a_client_that_leaves_before_its_batch_costs_no_engine_time(server: Server) -> None:
    # ~1.3 s of engine time per 512-text call on the 2-core CI machine: well past the client's hang-up
    long_texts = [f"{i} " + " ".join(["hybrid search"] * 120) for i in range(1024)]  # 1.7 MB: under the 2 MB limit
    answers: list[httpx.Response] = []
    busy = threading.Thread(target=lambda: answers.append(httpx.post(
        server.url + "/embed", json={"inputs": long_texts, "model": "bge-m3", "normalize": False}, timeout=120)))
    dropped_before = metric(server, "bge_dropped_jobs_total")
    busy.start()  # two 512-text calls keep both of the model's workers busy
    time.sleep(0.3)
    _send_and_leave(server.url, b'{"inputs": ["nobody waits for this"], "model": "bge-m3", "truncate": false}')
    busy.join()
    assert answers[0].status_code == 200  # the engine really was busy with it
    deadline = time.time() + 10
    while metric(server, "bge_dropped_jobs_total") <= dropped_before and time.time() < deadline:
        httpx.post(server.url + "/embed", json={"inputs": ["poke"], "model": "bge-m3", "truncate": False})
        time.sleep(0.1)
    assert metric(server, "bge_dropped_jobs_total") == dropped_before + 1


def test_sigterm_finishes_the_request_in_flight_and_exits_0(dense_path: str) -> None:
    running = start_server("--model", dense_path)
    texts = [f"{i} " + " ".join(["graceful shutdown"] * 100) for i in range(256)]
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        "r", httpx.post(running.url + "/embed", json={"inputs": texts}, timeout=120)))
    thread.start()
    deadline = time.time() + 30
    while metric(running, "bge_requests_in_flight") < 1 and time.time() < deadline:
        time.sleep(0.01)
    assert metric(running, "bge_requests_in_flight") >= 1
    code = running.stop()
    thread.join()
    assert code == 0, running.log()
    response = result["r"]
    assert response.status_code == 200
    expected = Embedder(dense_path, device="cpu").encode(texts).dense
    assert cosines(np.asarray(response.json()), expected).min() >= 0.99999


def test_several_server_processes_share_the_port_count_together_and_stop_with_0(dense_path: str,
                                                                                dense: Embedder) -> None:
    """`--workers 2`: two server processes listen on one address, every answer equals the in-process
    vectors, /metrics adds up the processes, and SIGTERM stops both with status 0."""
    running = start_server("--model", dense_path, "--workers", "2")
    try:
        assert "2 processes, engine host process" in running.log()
        texts = [f"worker test {i}: pandas eat bamboo" for i in range(96)]

        async def send_all() -> list[list[list[float]]]:
            # one connection per client: the kernel hands new connections to either process
            async def one(i: int) -> list[list[float]]:
                async with httpx.AsyncClient(base_url=running.url, timeout=60) as http:
                    response = await http.post("/embed", json={"inputs": [texts[i]]})
                    assert response.status_code == 200, response.text
                    return response.json()

            return await asyncio.gather(*(one(i) for i in range(len(texts))))

        answers = asyncio.run(send_all())
        got = np.asarray([a[0] for a in answers])
        assert cosines(got, dense.encode(texts).dense).min() >= 0.99999
        assert metric(running, "te_request_success_total") >= len(texts)
        # the engine host's own calls: every text once, merged across both processes' calls
        assert metric(running, "bge_engine_batch_size_sum") == len(texts)
        calls = metric(running, "bge_engine_batch_size_count")
        assert 1 <= calls <= len(texts) and metric(running, "bge_engine_call_duration_count") == calls
        children = _children(running.process.pid)
        assert len(children) == 3, children  # two HTTP processes and the engine host
    finally:
        code = running.stop()
    assert code == 0, running.log()
    deadline = time.time() + 10
    while any(_alive(pid) for pid in children) and time.time() < deadline:
        time.sleep(0.1)
    for pid in children:
        assert not _alive(pid), f"server process {pid} still runs after SIGTERM"


def _children(pid: int) -> list[int]:
    """Ids of the server processes `pid` spawned (Linux /proc; multiprocessing's resource tracker left out)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    command = handle.read()
            except OSError:
                continue
            if int(fields[1]) == pid and b"spawn_main" in command:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
