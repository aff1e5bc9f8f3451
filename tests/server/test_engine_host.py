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

    def run(self, key: Hashable, items: list[Any]) -> list[Any]:
        self.calls.append((key, list(items)))
        if key[0] == "wait":
            self.barrier.wait()
        if key[0] == "hold":
            self.release.wait(10)
        if key[0] == "fail":
            raise ValueError("bad input at index 0")
        return [f"{item}!" for item in items]


@contextlib.contextmanager
def _serving(directory: str, model: Any, **options: Any) -> Iterator[str]:
    """`serve_calls` for `model` (as "m") on a thread, listening on a socket in `directory` (its path is
    yielded); stopped, and checked to have stopped, on the way out."""
    path = os.path.join(directory, "engine.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    stop_reader, stop_writer = socket.socketpair()
    loop = threading.Thread(target=serve_calls, args=(listener, {"m": model}, 512, stop_reader), kwargs=options,
                            daemon=True)
    loop.start()
    try:
        yield path
    finally:
        stop_writer.send(b"x")
        loop.join(10)
        listener.close()
    assert not loop.is_alive()


@pytest.fixture
def host(tmp_path) -> Iterator[tuple[str, _Model]]:
    model = _Model()
    with _serving(tmp_path, model) as path:
        yield path, model
        model.release.set()


def _run(path: str, jobs: list[tuple[Hashable, list[Any]]], then: Any = None) -> list[Any]:
    """Send every job at once through one `HostClient`; `then()` runs half a second later."""

    async def main() -> list[Any]:
        client = HostClient(path)
        await client.start()
        try:
            answers = asyncio.gather(*(client.run("m", key, items) for key, items in jobs), return_exceptions=True)
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


def test_calls_after_the_host_has_gone_fail_at_once(tmp_path):
    """A server process whose engine host closed the connection gets an error for each later call, not
    a wait that never ends."""
    path = os.path.join(tmp_path, "engine.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    async def main() -> list[Any]:
        client = HostClient(path)
        await client.start()
        conn, _ = listener.accept()
        conn.close()  # the host goes
        await asyncio.sleep(0.2)  # the client has read the end of the stream
        try:
            calls = (client.run("m", ("k",), ["x"]), client.call("m", "tokenize", ["x"]))
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
        finally:
            await client.stop()

    errors = asyncio.run(main())
    listener.close()
    assert all(isinstance(e, RuntimeError) and "stopped" in str(e) for e in errors), errors


def test_a_server_process_that_leaves_gets_no_replies_and_its_socket_is_not_written_once_closed(host):
    """A server process leaves while its runs are in engine calls (held) and queued. A second one connects
    (its socket may reuse the first one's descriptor number) and asks with the same call ids: when the
    held calls finish, their replies are not written to the new connection, and the queued run of the
    one that left is never run."""
    path, model = host

    async def main() -> list[Any]:
        leaving = HostClient(path)
        await leaving.start()
        held = [asyncio.ensure_future(leaving.run("m", ("hold", n), [f"h{n}"])) for n in (1, 2)]
        queued = asyncio.ensure_future(leaving.run("m", ("k",), ["never"]))
        for _ in range(200):  # both engine calls are busy with the held runs
            if len(model.calls) == 2:
                break
            await asyncio.sleep(0.01)
        await leaving.stop()
        await asyncio.sleep(0.2)  # the host has seen the connection end
        staying = HostClient(path)
        await staying.start()
        try:
            answers = asyncio.gather(staying.run("m", ("k",), ["b"]), staying.run("m", ("k2",), ["c"]))
            await asyncio.sleep(0.2)
            model.release.set()
            return await asyncio.wait_for(answers, 10)
        finally:
            await staying.stop()
            gone = await asyncio.gather(*held, queued, return_exceptions=True)
            assert all(isinstance(e, RuntimeError) and "stopped" in str(e) for e in gone), gone

    assert asyncio.run(main()) == [["b!"], ["c!"]]
    assert [items for _, items in model.calls if items == ["never"]] == []


def test_the_host_runs_one_call_at_a_time_only_when_every_model_is_on_the_cpu(monkeypatch):
    from bge_server import ServerConfig
    from bge_server.engine_host import engine_calls

    monkeypatch.delenv("BGE_SERVE_ENGINE_CALLS", raising=False)
    config = ServerConfig(models=["m"])
    assert engine_calls(config, [{"device": "cpu"}, {"device": "cpu"}]) == 1
    assert engine_calls(config, [{"device": "cpu"}, {"device": "cuda:0"}]) == 2
    assert engine_calls(ServerConfig(models=["m"], calls_in_flight=3), [{"device": "cpu"}]) == 3
    monkeypatch.setenv("BGE_SERVE_ENGINE_CALLS", "2")
    assert engine_calls(config, [{"device": "cpu"}]) == 2


def test_a_fault_after_the_model_call_answers_with_an_error_and_the_thread_keeps_serving(host):
    """A model call that returns something the host cannot cut into its runs' replies: those runs get an
    error (not a wait that never ends), and both engine threads keep serving."""
    path, model = host
    original = model.run
    model.run = lambda key, items: 42 if key == ("broken",) else original(key, items)
    broken, ok = _run(path, [(("broken",), ["x"]), (("k",), ["y"])])
    assert isinstance(broken, RuntimeError) and "engine host failed" in str(broken)
    assert ok == ["y!"]
    assert _run(path, [(("k", n), [f"z{n}"]) for n in range(4)]) == [[f"z{n}!"] for n in range(4)]


class _TimedModel:
    """A served model whose engine call takes `seconds` whatever its size; records each call's size."""

    kind = "embedding"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sizes: list[int] = []

    def run(self, key: Hashable, items: list[Any]) -> list[Any]:
        self.sizes.append(len(items))
        time.sleep(self.seconds)
        return list(items)


@pytest.mark.parametrize("rejoin_wait", [0.0, 0.5])
def test_the_host_holds_its_next_call_for_the_runs_it_just_answered_when_asked(tmp_path, rejoin_wait: float):
    """Eight clients that each wait for their answer, half of them a moment late, behind one engine call at
    a time: started at once, each call takes only the half that was waiting; with `rejoin_wait` the host
    waits for the half it answered and the two halves share calls."""
    model = _TimedModel(0.1)

    async def main(path: str) -> None:
        client = HostClient(path)
        await client.start()

        async def one(index: int) -> None:
            if index >= 4:
                await asyncio.sleep(0.01)
            for turn in range(4):
                assert await client.run("m", ("k",), [f"{index}.{turn}"]) == [f"{index}.{turn}"]
                await asyncio.sleep(0.005)

        try:
            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(8))), 20)
        finally:
            await client.stop()

    with _serving(tmp_path, model, engine_calls=1, rejoin_wait=rejoin_wait) as path:
        asyncio.run(main(path))
    assert sum(model.sizes) == 32
    if rejoin_wait:
        assert max(model.sizes) == 8 and len(model.sizes) <= 6
    else:  # the groups never merge: each needs its own four calls (more where a group splits further)
        assert len(model.sizes) >= 8 and max(model.sizes) < 8


def test_a_held_call_waits_no_longer_than_its_window_and_not_at_all_without_rejoin_wait():
    from bge_server.engine_host import _Runs

    run = ("run", 1, "m", ("k",), ["x"])
    now = time.perf_counter()
    assert _Runs(64).rejoin_after(4, now - 1.0, now) is None
    runs = _Runs(64, rejoin_wait=0.5)
    target, deadline = runs.rejoin_after(4, now - 0.04, now)  # four answered; the window is half of a 40 ms call
    assert target == 4 and 0.015 < deadline - time.perf_counter() <= 0.02
    runs.add([(None, run)])  # one of the four comes back, the others never do
    group = runs.take((target, deadline))
    assert [message for _, message in group] == [run]
    assert time.perf_counter() >= deadline  # held for the others until the window closed, then served
