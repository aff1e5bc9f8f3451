"""One persistent worker process per device.

Threads cannot feed several GPUs: launching kernels, packing batches and building outputs all hold
the one GIL, so two GPUs in one process reach ~1.4× one (bench/). Here each device has its own
process with its own engine that tokenizes, batches and runs the chunks of input it takes from a
shared queue; the calling process only cuts the input into chunks (by characters, smaller towards
the end so the devices finish together) and collects outputs. A worker sends each batch's head
outputs as host arrays through its ring of shared memory (`bge_core.engine.transfer`), and the
calling process builds the per-row results (lexical-weight dicts, views of ColBERT vectors) from
them: a worker spends no time on per-row Python objects, and none are pickled.

Workers are started with the "spawn" method (CUDA cannot be forked), so a script that creates a
multi-device model must guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import queue
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from tqdm.auto import tqdm

from bge_core.engine.runner import (
    FIRST_CHUNK_CHARS,
    _chars,
    _check_lengths,
    _chunk_end,
    cycle_collection_paused,
    place_rows,
)
from bge_core.engine.transfer import RING_BYTES, OutputRing, RingReader, pickled, read_message
from bge_core.families.base import Family, HostOutputs, TokenizedItem
from bge_core.models.compiled import allow_compiling

log = logging.getLogger(__name__)

#: Set to "0" to send outputs through the pipe only (no shared memory).
SHARED_MEMORY_ENV = "BGE_CORE_SHARED_MEMORY"
#: Seconds allowed for a worker to start and load its model.
START_TIMEOUT = 600.0
#: Seconds a worker waits for the next chunk of a call before it lets its device drain.
NEXT_CHUNK_WAIT = 0.01
#: Chunks per worker at the end of a call (about) that run in batches of a quarter of the token budget.
TAIL_CHUNKS = 2
TAIL_BUDGET_DIVISOR = 4
#: Characters in the largest chunk of input a worker takes at a time (~150k tokens of text).
MAX_SHARE_CHARS = 1 << 20


def _shares(items: list[Any], workers: int) -> Iterator[tuple[int, list[Any], bool]]:
    """(start, items, in the tail) chunks for `workers` workers: one small chunk each to start at once
    (handed out before the rest is even measured), then about a quarter of what is left per worker,
    capped, so the last chunks are small. The tail is the last few chunks of the smallest size."""
    start = 0
    for _ in range(workers):
        end, _ = _chunk_end(items, start, FIRST_CHUNK_CHARS)
        if end == start:
            return
        yield start, items[start:end], False
        start = end
    remaining = sum(_chars(item) for item in items[start:])
    while start < len(items):
        target = min(MAX_SHARE_CHARS, max(FIRST_CHUNK_CHARS, remaining // (4 * workers)))
        end, chars = _chunk_end(items, start, target)
        yield start, items[start:end], remaining <= TAIL_CHUNKS * workers * FIRST_CHUNK_CHARS
        start, remaining = end, remaining - chars


def _worker_main(load_engine: Callable[..., Any], load_kwargs: dict[str, Any], worker: int, device: str,
                 jobs: Any, results: Any, released: Any) -> None:
    """A worker process: load the model on `device`, then tokenize, batch and run every chunk of
    input taken from `jobs`.

    Consecutive chunks of one call run as one stream (the next chunk tokenized while the device
    works, two batches queued on it while the host finishes the previous one); the stream ends when
    no chunk of the call comes within NEXT_CHUNK_WAIT.
    """
    try:
        engine = load_engine(**load_kwargs, device=device)
        torch.set_grad_enabled(False)
        allow_compiling()  # a worker lives as long as its model: compiling pays there
    except BaseException as error:  # noqa: BLE001 - reported to the caller, which raises it
        results.put(("failed", worker, _portable(error)))
        return
    ring = None
    if _shared_memory_is_ample():
        try:
            ring = OutputRing.create(RING_BYTES, released)
        except OSError as error:  # /dev/shm filled up meanwhile: outputs go through the pipe
            log.warning("no shared-memory ring for %s (%s); sending outputs through the pipe", device, error)
    results.put(("ready", worker, None if ring is None else (ring.name, ring.size)))
    outbox: queue.Queue = queue.Queue(maxsize=4)

    def send() -> None:
        while (item := outbox.get()) is not None:
            call, indices, counts, parts = item
            try:
                message = pickled(parts) if ring is None else ring.write(parts)
                results.put(("out", worker, (call, indices, counts, message)))
            except BaseException as error:  # noqa: BLE001 - e.g. an output that does not pickle
                results.put(("error", worker, (call, _portable(error))))

    # Copying outputs out happens on the sender thread, beside the next launches.
    sender = threading.Thread(target=send, name="bge-send", daemon=True)
    sender.start()
    failed: set[int] = set()
    message = jobs.get()
    while message is not None:
        call, (max_length, options) = message[1], message[2]
        if call in failed:  # the rest of a call that already failed here
            message = jobs.get()
            continue
        chunks = _Chunks(jobs, message)

        def deliver(indices: list[int], parts: list[HostOutputs], call: int = call) -> None:
            counts = (engine.forward_calls, engine.rows_forwarded, engine.tokens_forwarded)
            outbox.put((call, indices, counts, parts))

        try:
            def tokens(indices: list[int], counts: list[int], call: int = call) -> None:
                results.put(("tokens", worker, (call, indices, counts)))

            stream = engine.chunk_batches(iter(chunks), max_length, options, ahead=1, on_tokens=tokens)
            with cycle_collection_paused():
                engine.drive(stream, options, deliver, _NoBar())
        except BaseException as error:  # noqa: BLE001 - sent back to the caller
            failed.add(call)
            results.put(("error", worker, (call, _portable(error))))
        message = chunks.following if chunks.following is not _NOTHING else jobs.get()
    outbox.put(None)  # shut down: send what is done, then stop the sender
    sender.join(timeout=30)
    if ring is not None:
        ring.unlink()


_NOTHING = object()


class _Chunks:
    """Consecutive input chunks of one call, (start, items, token budget), for as long as the queue has them
    ready; `following` is the message that ended the run (another call's chunk, or None to shut down).
    A call's last chunk says so: after it nothing is awaited, so a small call (one chunk) starts and ends
    without waiting for chunks that will never come."""

    def __init__(self, jobs: Any, first: tuple) -> None:
        self.jobs, self.first, self.following = jobs, first, _NOTHING

    def __iter__(self) -> Iterator[tuple[int, list[Any]]]:
        yield self.first[3:6]
        if self.first[6]:
            return
        while True:
            try:  # a short wait rides out a hiccup of the feeding process without draining the device
                message = self.jobs.get(timeout=NEXT_CHUNK_WAIT)
            except queue.Empty:
                return
            if message is None or message[1] != self.first[1]:
                self.following = message
                return
            yield message[3:6]
            if message[6]:
                return


def _shared_memory_is_ample() -> bool:
    """Whether /dev/shm has room for a ring (containers often give it 64 MB) with plenty to spare
    for everyone else; where not, outputs are pickled whole through the pipe instead."""
    if os.environ.get(SHARED_MEMORY_ENV) == "0":
        return False
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize >= 2 * RING_BYTES


class _NoBar:
    def update(self, n: int) -> None:
        pass


def _portable(error: BaseException) -> BaseException:
    """The error itself if it pickles, else a RuntimeError carrying its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")


class ProcessDevicePool:
    """Persistent worker processes, one per device; `run` spreads a call's batches over all of them.

    `scheduler` is an engine loaded in this process (on the CPU) that never runs the model: it
    checks lengths when truncation is off and answers `tokenize`; the workers tokenize their chunks.
    `load_engine(**load_kwargs, device=…)` (a module-level function, so it pickles) loads each worker's
    engine; the loader is passed in so that this module never imports `bge_core.loading`.

    Example:
        >>> pool = ProcessDevicePool(scheduler, load_engine, dict(name_or_path=path, dtype="bf16"),
        ...                          ["cuda:0", "cuda:1"], packed=True, token_budget=65536)
        >>> outputs = pool.run(texts, max_length=512, options={}, truncate=True, token_budget=None)
    """

    def __init__(self, scheduler: Any, load_engine: Callable[..., Any], load_kwargs: dict[str, Any],
                 devices: list[str], packed: bool, token_budget: int) -> None:
        self.scheduler = scheduler
        self.devices = [str(d) for d in devices]
        self.device = torch.device(self.devices[0])
        self.packed = packed
        self.token_budget = token_budget
        self.closed = False
        self._counts = [(0, 0, 0)] * len(self.devices)  # (batches, rows, tokens) each worker has run, as it last said
        self._lock = threading.Lock()
        self._calls = itertools.count(1)
        context = torch.multiprocessing.get_context("spawn")
        self._jobs = context.Queue(maxsize=4 * len(self.devices))
        self._results = context.Queue()
        # At exit, unsent jobs are dropped instead of blocking the interpreter's shutdown.
        self._jobs.cancel_join_thread()
        self._released = [context.RawValue("Q", 0) for _ in self.devices]  # each worker's ring, copied out
        self._readers: list[RingReader | None] = [None] * len(self.devices)
        self._processes = [
            context.Process(target=_worker_main, args=(load_engine, load_kwargs, i, d, self._jobs, self._results,
                                                       self._released[i]), daemon=True, name=f"bge-device-{d}")
            for i, d in enumerate(self.devices)
        ]
        for process in self._processes:
            process.start()
        ready = 0
        while ready < len(self.devices):
            kind, worker, payload = self._next_result(START_TIMEOUT)  # type: ignore[misc]
            if kind == "failed":
                self.close()
                raise payload
            if kind == "ready":
                ready += 1
                if payload is not None:
                    self._readers[worker] = RingReader(*payload, self._released[worker])

    @property
    def family(self) -> Family:
        return self.scheduler.family

    @property
    def forward_calls(self) -> int:
        return sum(counts[0] for counts in self._counts)

    @property
    def rows_forwarded(self) -> int:
        return sum(counts[1] for counts in self._counts)

    @property
    def tokens_forwarded(self) -> int:
        return sum(counts[2] for counts in self._counts)

    @property
    def rows_by_worker(self) -> list[int]:
        """Rows each device's worker has run."""
        return [counts[1] for counts in self._counts]

    def tokenize(self, items: list[Any], max_length: int, options: dict[str, Any]) -> list[TokenizedItem]:
        return self.scheduler.tokenize(items, max_length, options)

    def run(
        self,
        items: list[Any],
        *,
        max_length: int,
        options: dict[str, Any],
        truncate: bool = True,
        token_budget: int | None = None,
        show_progress: bool = False,
        on_batch: Callable[[list[int], list[Any]], None] | None = None,
        on_tokens: Callable[[list[int], list[int]], None] | None = None,
    ) -> list[Any]:
        """`Engine.run` spread over every device's worker; outputs in input order."""
        if not items:
            return []
        with self._lock:
            if self.closed:
                raise RuntimeError(f"the workers for {', '.join(self.devices)} have stopped; load the model again")
            self._check_alive()
            return self._run(items, max_length, options, truncate, token_budget or self.token_budget, show_progress,
                             on_batch, on_tokens)

    def _run(self, items: list[Any], max_length: int, options: dict[str, Any], truncate: bool, budget: int,
             show_progress: bool, on_batch: Callable[[list[int], list[Any]], None] | None,
             on_tokens: Callable[[list[int], list[int]], None] | None = None) -> list[Any]:
        call = next(self._calls)
        if not truncate:  # every input is checked before any work starts, as on one device
            _check_lengths(self.scheduler.tokenize(items, max_length, options), max_length)
        results: list[Any] = [None] * len(items)
        failure: list[BaseException] = []
        stop = threading.Event()

        def feed() -> None:
            held = None  # each chunk is sent once the next is known, so the last goes out marked as such
            for start, part, tail in _shares(items, len(self.devices)):
                if stop.is_set():
                    return
                # The last chunks run in smaller batches: the call ends when the last batch's outputs
                # have been built, sent and read, so the final batches should be quick to finish.
                share_budget = max(1, budget // TAIL_BUDGET_DIVISOR) if tail else budget
                if held is not None:
                    self._put((*held, False), stop)
                held = ("chunk", call, (max_length, options), start, part, share_budget)
            if held is not None and not stop.is_set():
                self._put((*held, True), stop)

        feeder = threading.Thread(target=feed, name="bge-feed", daemon=True)
        feeder.start()

        def place(worker: int, indices: list[int], message: tuple) -> None:
            place_rows(results, indices, read_message(message, self._readers[worker]), on_batch)

        remaining = len(items)
        # Outputs are copied out and built into rows on one thread per worker (in that worker's order,
        # as its ring needs): the copies release the GIL, so two workers' batches are read at once.
        readers = [ThreadPoolExecutor(max_workers=1, thread_name_prefix="bge-read") for _ in self.devices]
        placed: list[Future] = []
        try:
            with cycle_collection_paused(), tqdm(total=len(items), disable=not show_progress, desc="encode") as bar:
                while remaining and not failure:
                    received = self._next_result(None, stop)
                    if received is None:
                        continue
                    kind, worker, payload = received
                    stale = not isinstance(payload, tuple) or payload[0] != call  # from an earlier call
                    if kind == "out" and stale:
                        readers[worker].submit(self._skip, worker, payload[-1])
                    if stale:
                        continue
                    if kind == "error":
                        failure.append(payload[1])
                        continue
                    if kind == "tokens":
                        if on_tokens is not None:
                            on_tokens(payload[1], payload[2])
                        continue
                    _, indices, counts, message = payload
                    placed.append(readers[worker].submit(place, worker, indices, message))
                    remaining -= len(indices)
                    bar.update(len(indices))
                    self._counts[worker] = counts
        finally:
            stop.set()
            feeder.join()
            for reader in readers:
                reader.shutdown(wait=True)
        for future in placed:
            future.result()
        if failure:
            with contextlib.suppress(queue.Empty):  # drop this call's chunks still waiting
                while True:
                    self._jobs.get_nowait()
            raise failure[0]
        return results

    def _skip(self, worker: int, message: tuple) -> None:
        reader = self._readers[worker]
        if reader is not None:
            reader.skip(message)

    def _put(self, message: tuple, stop: threading.Event | None) -> None:
        """Queue a message, checking now and then that the workers are alive."""
        while True:
            try:
                self._jobs.put(message, timeout=1.0)
                return
            except queue.Full:
                self._check_alive()
                if stop is not None and stop.is_set():
                    return

    def _next_result(self, timeout: float | None, stop: threading.Event | None = None) -> tuple[str, str, Any] | None:
        """The next worker message; None once `stop` is set. Checks every second that the workers live."""
        waited = 0.0
        while True:
            try:
                return self._results.get(timeout=1.0 if stop is None else 0.1)
            except queue.Empty:
                if stop is not None and stop.is_set():
                    return None
                self._check_alive()
                waited += 1.0 if stop is None else 0.1
                if timeout is not None and waited >= timeout:
                    self.close()
                    raise TimeoutError(f"device workers did not start within {timeout:.0f} s") from None

    def _check_alive(self) -> None:
        for device, process in zip(self.devices, self._processes):
            if not process.is_alive():
                self.close()
                raise RuntimeError(f"the worker process for {device} exited (code {process.exitcode})")

    def close(self) -> None:
        """Stop the workers (also done at interpreter exit: they are daemons)."""
        if self.closed:
            return
        self.closed = True
        for _ in self._processes:
            with contextlib.suppress(Exception):
                self._jobs.put_nowait(None)
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
        for channel in (self._jobs, self._results):
            channel.close()
        for reader in self._readers:
            if reader is not None:
                reader.close()
