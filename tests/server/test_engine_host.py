"""The engine host's loop on its own: merged runs, two engine calls at once, errors, a gone client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Hashable, Iterator
from typing import Any

import pytest

from bge_server.engine_host import HostClient, serve_calls


class _Model:
    """A served model stand-in for the loop: `run` answers ``item + "!"`` for each input and records its
    calls; keys name what else it does: ``("wait", n)`` meets another call at `barrier`, ``("hold", n)``
    waits for `release`, ``("fail",)`` raises."""

    kind = "embedding"

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=10)
        self.release = threading.Event()
        self.calls: list[tuple[Hashable, list[Any]]] = []
        self.started: list[float] = []  # when each call began (time.perf_counter)

    def run(self, key: Hashable, items: list[Any]) -> list[Any]:
        self.started.append(time.perf_counter())
        self.calls.append((key, list(items)))
        if key[0] == "wait":
            self.barrier.wait()
        if key[0] == "hold":
            self.release.wait(10)
        if key[0] == "fail":
            raise ValueError("bad input at index 0")
        return [f"{item}!" for item in items]


@contextlib.contextmanager
def _serving(directory: str, max_items: int = 512, overlap_after: float = 0.0) -> Iterator[tuple[str, _Model]]:
    """The host's loop on a thread, serving a fresh `_Model` as "m" on a socket in `directory`."""
    model = _Model()
    path = os.path.join(directory, "engine.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    stop_reader, stop_writer = socket.socketpair()
    loop = threading.Thread(target=serve_calls, args=(listener, {"m": model}, max_items, stop_reader),
                            kwargs={"overlap_after": overlap_after}, daemon=True)
    loop.start()
    yield path, model
    model.release.set()
    stop_writer.send(b"x")
    loop.join(10)
    assert not loop.is_alive()
    listener.close()


@pytest.fixture
def host(tmp_path) -> Iterator[tuple[str, _Model]]:
    with _serving(str(tmp_path)) as running:
        yield running


def _run(path: str, jobs: list[tuple[Hashable, list[Any]]], then: Any = None, spacing: float = 0.0) -> list[Any]:
    """Send the jobs through one `HostClient`, `spacing` seconds apart (0: all at once); `then()` runs
    half a second after the last."""

    async def main() -> list[Any]:
        client = HostClient(path)
        await client.start()
        try:
            sent = []
            for key, items in jobs:
                sent.append(asyncio.ensure_future(client.run("m", key, items)))
                await asyncio.sleep(spacing)
            answers = asyncio.gather(*sent, return_exceptions=True)
            if then is not None:
                await asyncio.sleep(0.5)
                then()
            return await asyncio.wait_for(answers, 20)
        finally:
            await client.stop()

    return asyncio.run(main())


def test_two_engine_calls_run_at_once(host):
    """Two runs that cannot merge (different options) meet at a barrier inside the model: both are
    answered only if the host runs their engine calls at the same time (one at a time, the barrier
    breaks after 10 s and both get an error)."""
    path, model = host
    assert _run(path, [(("wait", 1), ["a"]), (("wait", 2), ["b", "c"])]) == [["a!"], ["b!", "c!"]]
    assert len(model.calls) == 2


def test_runs_queued_behind_busy_calls_merge_and_each_gets_its_own_results(host):
    """While both engine calls are held, 20 runs of one model and options queue up; released, they
    become one engine call, and each run gets its own slice of its results."""
    path, model = host
    jobs = [(("hold", 1), ["h1"]), (("hold", 2), ["h2"])] + [(("k",), [f"t{i}", f"u{i}"]) for i in range(20)]
    results = _run(path, jobs, then=model.release.set)
    assert results[:2] == [["h1!"], ["h2!"]]
    assert results[2:] == [[f"t{i}!", f"u{i}!"] for i in range(20)]
    merged = [items for key, items in model.calls if key == ("k",)]
    assert merged == [[x for i in range(20) for x in (f"t{i}", f"u{i}")]]


def test_a_failing_call_answers_its_runs_with_the_error_and_the_host_keeps_serving(host):
    path, _ = host
    failed, ok = _run(path, [(("fail",), ["x"]), (("k",), ["y"])])
    assert isinstance(failed, ValueError) and "index 0" in str(failed)
    assert ok == ["y!"]
    assert _run(path, [(("k",), ["z"])]) == [["z!"]]


def test_replies_larger_than_the_socket_buffer_arrive_whole(host):
    """A reply of ~12 MB (far over a Unix socket's buffer) is sent in parts; every run gets its items back
    exactly, and a small reply after it is not mixed into it."""
    path, _ = host
    big = [f"{i:04d}" + "x" * 60_000 for i in range(200)]
    results = _run(path, [(("k",), big), (("other",), ["small"])])
    assert results == [[item + "!" for item in big], ["small!"]]


def test_with_an_overlap_delay_runs_arriving_while_a_call_runs_join_one_later_call(tmp_path):
    """`overlap_after`: while one engine call runs, three runs arriving 0.1 s apart wait and become one
    call that starts only once the running call has run 0.5 s (at once, each would be a call of its own,
    as the next test shows)."""
    with _serving(str(tmp_path), overlap_after=0.5) as (path, model):
        jobs = [(("hold", 1), ["h"])] + [(("k",), [f"t{i}"]) for i in range(3)]
        results = _run(path, jobs, then=model.release.set, spacing=0.1)
    assert results == [["h!"], ["t0!"], ["t1!"], ["t2!"]]
    assert [items for key, items in model.calls if key == ("k",)] == [["t0", "t1", "t2"]]
    assert model.started[1] - model.started[0] >= 0.45


def test_without_an_overlap_delay_a_free_engine_thread_takes_each_run_at_once(tmp_path):
    with _serving(str(tmp_path)) as (path, model):
        jobs = [(("hold", 1), ["h"])] + [(("k",), [f"t{i}"]) for i in range(3)]
        _run(path, jobs, then=model.release.set, spacing=0.1)
    assert [items for key, items in model.calls if key == ("k",)] == [["t0"], ["t1"], ["t2"]]


def test_a_full_batch_does_not_wait_for_the_overlap_delay(tmp_path):
    with _serving(str(tmp_path), max_items=4, overlap_after=5.0) as (path, model):
        jobs = [(("hold", 1), ["h"])] + [(("k",), ["a", "b"]), (("k",), ["c", "d"])]
        results = _run(path, jobs, then=model.release.set, spacing=0.05)
    assert results[1:] == [["a!", "b!"], ["c!", "d!"]]
    assert [items for key, items in model.calls if key == ("k",)] == [["a", "b", "c", "d"]]
    assert model.started[1] - model.started[0] < 2.0
