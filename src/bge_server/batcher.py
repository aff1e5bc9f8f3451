"""Continuous batching: requests from every client merged into one engine call per model.

Each request's inputs become jobs (a request larger than `max_items` is cut into several) in one FIFO
per model. A worker takes the oldest job and every queued job with the same options, up to
`max_items` inputs, runs one engine call over the merged inputs in a worker thread (never on the event
loop), and hands each job its slice of the results. While that call runs, new requests queue up and
form the next merged call. A job whose client has gone before its call starts is dropped.

Clients that wait for each answer before sending again split into convoys when the next call starts the
moment the last one ends: the clients just answered miss it and wait a whole call for the one after.
With `rejoin_wait`, a worker holds its next call, for at most that fraction of the call it just made
(and `REJOIN_WAIT_MAX_S`), until the clients it answered have sent again; a lone client that comes back
starts its call at once. `bge serve` leaves it off unless asked (`ServerConfig.rejoin_wait`,
$BGE_SERVE_REJOIN_WAIT).
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from bge_server.errors import ApiError
from bge_server.metrics import Metrics

#: A request still waiting this long starts watching for its client's disconnect.
WATCH_AFTER_S = 0.05
#: The longest a worker holds a call for answered clients (`rejoin_wait`), however long the last call was:
#: clients on loopback or a LAN are back within milliseconds, and clients that are done must not idle the
#: engine for a quarter of a long batch call.
REJOIN_WAIT_MAX_S = 0.025
#: The engine call of one model: (options key, merged inputs) → one result per input, in order.
RunFn = Callable[[Hashable, list[Any]], list[Any]]
#: The same call made by another process (the engine host), awaited on the event loop.
AsyncRunFn = Callable[[Hashable, list[Any]], Awaitable[list[Any]]]


def rejoin_hold(rejoin_wait: float, queued: int, answered: int, max_items: int, started: float,
                ended: float) -> tuple[int, float]:
    """What a worker that answered `answered` inputs in a call from `started` to `ended` holds its next call
    for: (inputs queued: those already queued and the answered ones, at most a call's worth; until when:
    `rejoin_wait` of the call, at most `REJOIN_WAIT_MAX_S` after it ended).

    Example:
        >>> rejoin_hold(0.25, queued=3, answered=8, max_items=512, started=0.0, ended=0.04)
        (11, 0.05)
        >>> rejoin_hold(0.25, queued=3, answered=600, max_items=512, started=0.0, ended=1.0)  # both bounds
        (512, 1.025)
    """
    window = min(rejoin_wait * (ended - started), REJOIN_WAIT_MAX_S)
    return min(queued + answered, max_items), ended + window


class ClientGone(Exception):
    """The client closed its connection before its results were ready."""


@dataclass
class CallTimes:
    """Where a request's inputs spent their time in the batcher, in seconds: waiting for an engine call
    (`queue_s`) and in it (`call_s`), averaged over the inputs (a request split across calls has several).

    Example:
        >>> times = CallTimes()
        >>> await batcher.submit(key, texts, times=times)
        >>> times.queue_s < times.call_s
        True
    """

    queue_s: float = 0.0
    call_s: float = 0.0


@dataclass
class _Job:
    key: Hashable
    items: list[Any]
    offset: int  # position of items[0] in its request (error messages name request indices)
    future: asyncio.Future[list[Any]]
    queued_at: float = field(default_factory=time.perf_counter)
    gone: bool = False
    started: float = 0.0  # when its engine call started and ended
    ended: float = 0.0


class MicroBatcher:
    """Merges concurrent requests of one model into engine calls.

    Args:
        run: the engine call (runs in one of `workers` threads), or with `remote`, an async function
            that has another process make it (no thread in this process then).
        max_items: most inputs per engine call; requests larger than this are split.
        workers: engine calls in flight at once (the engine serializes forwards; a second call
            tokenizes while the first runs).
        metrics: where queue and batch figures go.
        join: puts the result parts of a split request back together (default: list concatenation);
            a run that returns a columnar result (`EmbedRows`) gives its own.
        rejoin_wait: after a call, how long a worker may hold the next one for the inputs it just answered
            to come back, as a fraction of the call's duration (0: start at once; never past REJOIN_WAIT_MAX_S).

    Example:
        >>> batcher = MicroBatcher(lambda key, items: [len(t) for t in items], max_items=512)
        >>> await batcher.start()
        >>> await batcher.submit(("dense",), ["a", "bb"])
        [1, 2]
    """

    def __init__(self, run: RunFn | AsyncRunFn, *, max_items: int = 512, workers: int = 2,
                 metrics: Metrics | None = None, name: str = "model", remote: bool = False,
                 join: Callable[[list[Any]], Any] | None = None, rejoin_wait: float = 0.0) -> None:
        if rejoin_wait < 0:
            raise ValueError(f"rejoin_wait must be at least 0, got {rejoin_wait}")
        self._run = run
        self._join = join or (lambda parts: [result for part in parts for result in part])
        self._remote = remote
        self.max_items = max_items
        self.workers = workers  # engine calls in flight at once
        self.rejoin_wait = rejoin_wait
        self._metrics = metrics
        self._name = name
        self._queue: collections.deque[_Job] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pool: ThreadPoolExecutor | None = None
        self.dropped = 0  # jobs skipped because their client had gone
        self._queue_gauge = None if metrics is None else metrics.queue_size.labels(name)

    async def start(self) -> None:
        """Start the worker tasks (on the running event loop)."""
        self._wakeup = asyncio.Event()
        if not self._remote:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"bge-{self._name}")
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        """Stop the workers; jobs still queued fail with Unhealthy."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(ApiError("Unhealthy", "the server is shutting down"))
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    @property
    def queued(self) -> int:
        """Inputs waiting for an engine call."""
        return sum(len(job.items) for job in self._queue)

    async def submit(self, key: Hashable, items: list[Any], request: Request | None = None,
                     times: CallTimes | None = None) -> list[Any]:
        """Results of `items` (in order) under options `key`, computed with whatever else is queued.

        With a `request`, a client that disconnects while its jobs wait has them dropped and gets
        `ClientGone`. `times`, if given, gets the inputs' mean time queued and in their engine call.
        """
        if self._wakeup is None:
            raise ApiError("Unhealthy", "the model's batcher is not running")
        loop = asyncio.get_running_loop()
        jobs = [
            _Job(key, items[start : start + self.max_items], start, loop.create_future())
            for start in range(0, len(items), self.max_items)
        ]
        self._queue.extend(jobs)
        self._wakeup.set()
        self._report_queue()
        waiter = jobs[0].future if len(jobs) == 1 else asyncio.gather(*(job.future for job in jobs))
        # Most requests are answered within milliseconds: only a request still waiting after WATCH_AFTER_S
        # gets a task listening for its client's disconnect (a task, or a timeout around the wait, for
        # every request costs more than this timer).
        timer = None if request is None else loop.call_later(WATCH_AFTER_S, _watch, request, jobs, waiter)
        try:
            parts = await waiter
        finally:
            if timer is not None:
                timer.cancel()
        if times is not None:
            times.queue_s = sum((job.started - job.queued_at) * len(job.items) for job in jobs) / len(items)
            times.call_s = sum((job.ended - job.started) * len(job.items) for job in jobs) / len(items)
        return parts if len(jobs) == 1 else self._join(parts)

    def _take(self) -> list[_Job]:
        """The oldest live job and the queued jobs with its key, up to `max_items` inputs."""
        while self._queue and self._queue[0].gone:
            self._drop(self._queue.popleft())
        if not self._queue:
            return []
        first = self._queue.popleft()
        batch, total, keep = [first], len(first.items), collections.deque()
        while self._queue and total < self.max_items:
            job = self._queue.popleft()
            if job.gone:
                self._drop(job)
            elif job.key == first.key and total + len(job.items) <= self.max_items:
                batch.append(job)
                total += len(job.items)
            else:
                keep.append(job)
        keep.extend(self._queue)
        self._queue = keep
        return batch

    def _drop(self, job: _Job) -> None:
        self.dropped += 1
        if self._metrics is not None:
            self._metrics.dropped.inc()
        if not job.future.done():
            job.future.cancel()

    async def _work(self) -> None:
        assert self._wakeup is not None
        rejoin: tuple[int, float] | None = None  # (inputs to wait for, until when) after a call
        while True:
            if rejoin is not None:
                await self._await_rejoin(*rejoin)
                rejoin = None
            batch = self._take()
            if not batch:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._report_queue()
            started = time.perf_counter()
            items = [item for job in batch for item in job.items]
            if self._metrics is not None:
                self._metrics.batch_size.observe(len(items))
            for job in batch:
                job.started = started
            try:
                results = await self._call(batch[0].key, items)
            except Exception as error:  # noqa: BLE001 - each job gets its own verdict below
                await self._run_alone(batch, error)
            else:
                position, ended = 0, time.perf_counter()
                for job in batch:
                    job.ended = ended
                    if not job.future.done():
                        job.future.set_result(results[position : position + len(job.items)])
                    position += len(job.items)
                tokens = getattr(results, "tokens", None)  # the engine's count, where the results carry it
                if self._metrics is not None and tokens is not None:
                    self._metrics.batch_tokens.observe(sum(tokens))
            ended = time.perf_counter()
            if self.rejoin_wait:
                rejoin = rejoin_hold(self.rejoin_wait, self.queued, len(items), self.max_items, started, ended)

    async def _await_rejoin(self, inputs: int, deadline: float) -> None:
        """Wait until `inputs` inputs are queued or until `deadline` (from `rejoin_hold`)."""
        assert self._wakeup is not None
        while self.queued < inputs:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _run_alone(self, batch: list[_Job], error: Exception) -> None:
        """A merged call failed: one job's bad input (e.g. too long with truncate off) must not fail the
        others, so each job runs alone and gets its own result or error."""
        for job in batch:
            if job.future.done():
                continue
            try:
                result = error if len(batch) == 1 else None
                if result is None:
                    job.started = time.perf_counter()
                    result = await self._call(job.key, job.items)
                job.ended = time.perf_counter()
                if isinstance(result, Exception):
                    raise result
                job.future.set_result(result)
            except Exception as failure:  # noqa: BLE001 - handed to the waiting request
                job.future.set_exception(_with_offset(failure, job.offset))

    async def _call(self, key: Hashable, items: list[Any]) -> list[Any]:
        """One engine call: awaited from the engine host, or run on one of this process's threads."""
        if self._remote:
            return await self._run(key, items)  # type: ignore[misc]
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, key, items)

    def _report_queue(self) -> None:
        if self._queue_gauge is not None:
            self._queue_gauge.set(self.queued)


def _with_offset(error: Exception, offset: int) -> Exception:
    """Core names indices within the job; shift them to indices of the whole request."""
    if offset and isinstance(error, ValueError):
        text = re.sub(r"at index ([\d, …]+)", lambda m: "at index " + re.sub(
            r"\d+", lambda d: str(int(d.group()) + offset), m.group(1)), str(error))
        return ValueError(text)
    return error


def _watch(request: Request, jobs: list[_Job], waiter: asyncio.Future[Any]) -> None:
    """Watch a waiting request's connection: if its client leaves first, its queued jobs are dropped
    and the request ends with `ClientGone`."""

    def left(watcher: asyncio.Task[None]) -> None:
        if watcher.cancelled() or waiter.done():
            return
        for job in jobs:
            job.gone = True
            if not job.future.done():
                job.future.set_exception(ClientGone())

    watcher = asyncio.ensure_future(_disconnected(request))
    watcher.add_done_callback(left)
    waiter.add_done_callback(lambda _: watcher.cancel())


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (the request body was already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
