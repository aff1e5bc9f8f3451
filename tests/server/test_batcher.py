"""`MicroBatcher`: merged engine calls, split requests, and clients that leave while their jobs wait."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import Request

from bge_server.batcher import WATCH_AFTER_S, ClientGone, MicroBatcher


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
    from bge_server import ServerConfig
    from bge_server.metrics import Metrics
    from bge_server.models import ModelSet

    for asked, expected in ((None, 1), (2, 2)):
        config = ServerConfig(models=[dense_path], rerankers=[cross_encoder_path], device="cpu", calls_in_flight=asked)
        models = ModelSet.load(config, Metrics())
        assert [m.batcher.workers for m in models.all()] == [expected, expected]
    assert ServerConfig(models=["m"]).calls_for("cuda:0") == 2
    assert ServerConfig(models=["m"]).calls_for(["cuda:0", "cuda:1"]) == 2
