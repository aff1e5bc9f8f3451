"""`MicroBatcher`: merged engine calls, split requests, and clients that leave while their jobs wait."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import Request

from bge_server import batcher as batcher_module
from bge_server.batcher import WATCH_AFTER_S, CallTimes, ClientGone, MicroBatcher
from bge_server.config import REJOIN_WAIT_ENV, ServerConfig


class Engine:
    """An engine call that records what it was given and can be held busy."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, key: Any, items: list[str]) -> list[str]:
        self.release.wait(10)
        self.calls.append(list(items))
        return [f"{key}:{item}" for item in items]


@contextlib.asynccontextmanager
async def running(max_items: int) -> AsyncIterator[tuple[Engine, MicroBatcher]]:
    """A started batcher with one worker over a fresh `Engine`."""
    engine = Engine()
    batcher = MicroBatcher(engine, max_items=max_items, workers=1)
    await batcher.start()
    try:
        yield engine, batcher
    finally:
        await batcher.stop()


async def hold(engine: Engine, batcher: MicroBatcher) -> asyncio.Future[list[Any]]:
    """A call of one input that the engine holds until `engine.release` is set."""
    engine.release.clear()
    busy = asyncio.ensure_future(batcher.submit("k", ["busy"]))
    await asyncio.sleep(0.05)  # the worker has taken it
    return busy


def connection(leaves: asyncio.Event | None = None) -> tuple[Request, list[str]]:
    """A request whose body was read; its client leaves when `leaves` is set (never when None).
    Also the list of messages the server asked for."""
    asked: list[str] = []

    async def receive() -> dict[str, Any]:
        asked.append("receive")
        if leaves is None:
            await asyncio.Event().wait()
        else:
            await leaves.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/embed", "headers": []}, receive), asked


async def test_a_request_larger_than_a_call_is_split_and_answered_in_order() -> None:
    async with running(max_items=4) as (engine, batcher):
        items = [str(i) for i in range(10)]
        request, asked = connection()
        assert await batcher.submit("k", items, request) == [f"k:{i}" for i in items]
        assert [len(call) for call in engine.calls] == [4, 4, 2]
        assert asked == []  # answered at once: its connection was never watched


async def test_requests_waiting_together_share_one_call() -> None:
    async with running(max_items=64) as (engine, batcher):
        first = await hold(engine, batcher)
        rest = [asyncio.ensure_future(batcher.submit("k", [f"q{i}"])) for i in range(8)]
        await asyncio.sleep(0.01)
        engine.release.set()
        assert await first == ["k:busy"]
        assert [await r for r in rest] == [[f"k:q{i}"] for i in range(8)]
        assert engine.calls == [["busy"], [f"q{i}" for i in range(8)]]


async def test_times_tell_a_requests_wait_and_its_call() -> None:
    """A request queued behind a held call reports that wait as queue time, and its own call as call time."""
    async with running(max_items=4) as (engine, batcher):
        first = await hold(engine, batcher)
        times = CallTimes()
        waiting = asyncio.ensure_future(batcher.submit("k", ["a", "b"], times=times))
        await asyncio.sleep(0.2)
        engine.release.set()
        await first
        assert await waiting == ["k:a", "k:b"]
        assert 0.15 <= times.queue_s < 5 and 0 <= times.call_s < 0.15
        split = CallTimes()  # three jobs of one request: input-weighted means
        assert await batcher.submit("k", list("abcdefghij"), times=split) == [f"k:{c}" for c in "abcdefghij"]
        assert 0 <= split.queue_s < 0.15 and 0 <= split.call_s < 0.15


@pytest.mark.parametrize("size", [1, 6])  # one job, or a request split into two
async def test_a_client_that_leaves_while_waiting_gets_client_gone_and_costs_no_call(size: int) -> None:
    async with running(max_items=4) as (engine, batcher):
        busy = await hold(engine, batcher)
        leaves = asyncio.Event()
        request, asked = connection(leaves)
        waiting = asyncio.ensure_future(batcher.submit("k", [f"gone{i}" for i in range(size)], request))
        await asyncio.sleep(WATCH_AFTER_S * 2)
        assert asked == ["receive"]  # still waiting past WATCH_AFTER_S: its connection is watched
        leaves.set()
        with pytest.raises(ClientGone):
            await waiting
        engine.release.set()
        assert await busy == ["k:busy"]
        assert await batcher.submit("k", ["next"]) == ["k:next"]  # the batcher goes on
        assert engine.calls == [["busy"], ["next"]]  # the leaver's items never reached the engine
        assert batcher.dropped == (1 if size == 1 else 2)


def test_models_on_the_cpu_get_one_engine_call_in_flight_unless_told(dense_path, cross_encoder_path):
    """On the CPU a second call in flight only splits the waiting requests into smaller batches: each model's
    batcher runs one call at a time there, and `calls_in_flight` still decides when given."""
    from bge_server.metrics import Metrics
    from bge_server.models import ModelSet

    for asked, expected in ((None, 1), (2, 2)):
        config = ServerConfig(models=[dense_path], rerankers=[cross_encoder_path], device="cpu", calls_in_flight=asked)
        models = ModelSet.load(config, Metrics())
        assert [m.batcher.workers for m in models.all()] == [expected, expected]
    assert ServerConfig(models=["m"]).calls_for("cuda:0") == 2
    assert ServerConfig(models=["m"]).calls_for(["cuda:0", "cuda:1"]) == 2


class TimedEngine:
    """An engine call that takes `seconds` whatever its size, and records when each call started."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls: list[tuple[float, int]] = []  # (start, inputs)

    def __call__(self, key: Any, items: list[str]) -> list[str]:
        self.calls.append((time.perf_counter(), len(items)))
        time.sleep(self.seconds)
        return list(items)


async def closed_loop_clients(batcher: MicroBatcher, clients: int, requests: int, think_s: float) -> None:
    """`clients` clients that each send a request, await its answer, pause `think_s` (the HTTP round trip)
    and send the next; the first half start at once, the others a moment later, as they connect."""

    async def client(index: int) -> None:
        if index >= clients // 2:
            await asyncio.sleep(0.01)
        for turn in range(requests):
            assert await batcher.submit("k", [f"{index}.{turn}"]) == [f"{index}.{turn}"]
            await asyncio.sleep(think_s)

    await asyncio.gather(*(client(i) for i in range(clients)))


@pytest.mark.parametrize("rejoin_wait", [0.0, 0.5])
async def test_answered_clients_rejoin_the_next_call_instead_of_forming_a_convoy(rejoin_wait: float) -> None:
    """Eight clients that wait for each answer: starting each call the moment the last ends keeps them in
    two alternating halves (the clients just answered always miss the next call); holding it briefly for
    them puts all eight in one call."""
    engine = TimedEngine(0.1)
    batcher = MicroBatcher(engine, max_items=64, workers=1, rejoin_wait=rejoin_wait)
    await batcher.start()
    try:
        await closed_loop_clients(batcher, clients=8, requests=4, think_s=0.005)
    finally:
        await batcher.stop()
    sizes = [inputs for _, inputs in engine.calls]
    if rejoin_wait:  # the late half joins the early half's second turn; the early half ends a call sooner
        assert sizes == [4, 8, 8, 8, 4]
    else:  # two halves taking turns, every call half full
        assert sizes == [4] * 8


@pytest.mark.parametrize(("call_s", "cap_s", "window_s"), [(0.2, 1.0, 0.1), (0.4, 0.05, 0.05)])
async def test_a_lone_client_is_not_held_and_clients_that_never_return_cost_at_most_the_window(
        monkeypatch, call_s: float, cap_s: float, window_s: float) -> None:
    """The window is half the last call here (rejoin_wait=0.5), never past REJOIN_WAIT_MAX_S."""
    monkeypatch.setattr(batcher_module, "REJOIN_WAIT_MAX_S", cap_s)
    engine = TimedEngine(call_s)
    batcher = MicroBatcher(engine, max_items=64, workers=1, rejoin_wait=0.5)
    await batcher.start()
    try:
        await batcher.submit("k", ["a"])
        sent = time.perf_counter()
        await batcher.submit("k", ["b"])  # the one client answered is the one that came back: no wait
        assert engine.calls[1][0] - sent < 0.03
        await asyncio.gather(*(batcher.submit("k", [f"x{i}"]) for i in range(4)))
        ended = time.perf_counter()
        await batcher.submit("k", ["newcomer"])  # four answered, none return: held until the window closes
        started = engine.calls[-1][0] - ended
        assert window_s * 0.5 < started < window_s + 0.04
    finally:
        await batcher.stop()


def test_rejoin_wait_is_off_unless_the_config_or_the_environment_asks(monkeypatch, dense_path) -> None:
    from bge_server.metrics import Metrics
    from bge_server.models import ModelSet

    monkeypatch.delenv(REJOIN_WAIT_ENV, raising=False)
    config = ServerConfig(models=["m"])
    assert config.batcher_rejoin_wait() == 0.0
    monkeypatch.setenv(REJOIN_WAIT_ENV, "0.5")
    assert config.batcher_rejoin_wait() == 0.5
    assert ServerConfig(models=["m"], rejoin_wait=0.1).batcher_rejoin_wait() == 0.1  # the setting wins
    models = ModelSet.load(ServerConfig(models=[dense_path], device="cpu"), Metrics())
    assert [m.batcher.rejoin_wait for m in models.all()] == [0.5]  # what the batchers are given
    for bad in ("-1", "soon", "nan"):
        monkeypatch.setenv(REJOIN_WAIT_ENV, bad)
        with pytest.raises(ValueError, match=REJOIN_WAIT_ENV):
            config.batcher_rejoin_wait()
    with pytest.raises(ValueError, match="rejoin_wait"):
        ServerConfig(models=["m"], rejoin_wait=-0.1)
    with pytest.raises(ValueError, match="rejoin_wait"):
        MicroBatcher(lambda key, items: items, rejoin_wait=-1)
