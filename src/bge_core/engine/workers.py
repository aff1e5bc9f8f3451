"""One persistent worker process per device.

Threads cannot feed several GPUs: launching kernels, packing batches and building outputs all hold
the one GIL, so two GPUs in one process reach ~1.4× one (bench/). Here each device has its own
process with its own engine, and the calling process only tokenizes, forms batches and collects
outputs. Batches go to whichever worker takes the next one from a shared queue, so work is split by
tokens, not by item counts. Output arrays travel in shared memory (one segment per batch); the rest
of an output (dicts, scalars) is pickled.

Workers are started with the "spawn" method (CUDA cannot be forked), so a script that creates a
multi-device model must guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import queue
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bge_core.families.base import Family, TokenizedItem

#: Arrays at least this large travel in shared memory; smaller ones are pickled.
SHARED_ARRAY_BYTES = 4096
#: Set to "0" to send outputs through the pipe only (no shared memory).
SHARED_MEMORY_ENV = "BGE_CORE_SHARED_MEMORY"
#: Seconds allowed for a worker to start and load its model.
START_TIMEOUT = 600.0


def dump_outputs(outputs: list[Any]) -> tuple[bytes, torch.Tensor | None, list[tuple[int, int]]]:
    """Pickle `outputs`, moving the data of every large numpy array into one shared-memory buffer.

    Arrays go out of band (pickle protocol 5): only they reach Python code here, not each of the
    many keys and weights of the lexical dicts. Returns the pickle, the buffer and each array's
    (offset, size) in it.

    Example:
        >>> data, shared, layout = dump_outputs([np.zeros(4096, dtype=np.float32)])
        >>> load_outputs(data, shared, layout)[0].shape
        (4096,)
    """
    arrays: list[np.ndarray] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        array = buffer.raw().obj
        if not isinstance(array, np.ndarray) or array.nbytes < SHARED_ARRAY_BYTES:
            return True  # stays in the pickle
        arrays.append(array)
        return False

    data = pickle.dumps(outputs, protocol=5, buffer_callback=out_of_band)
    if not arrays:
        return data, None, []
    # Views of one batch array (a row per text) are sent as that array, copied once.
    roots: dict[int, tuple[np.ndarray, int]] = {}  # id(root) -> (root, bytes of views into it)
    placed: list[tuple[np.ndarray, int]] = []  # (array to copy, or its root), byte offset into it
    for array in arrays:
        root = array
        while isinstance(root.base, np.ndarray):
            root = root.base
        inside = (root is not array and root.flags.c_contiguous and array.flags.c_contiguous
                  and 0 <= array.ctypes.data - root.ctypes.data <= root.nbytes - array.nbytes)
        if inside:
            seen = roots.get(id(root), (root, 0))
            roots[id(root)] = (root, seen[1] + array.nbytes)
        placed.append((root if inside else array, array.ctypes.data - root.ctypes.data if inside else 0))
    # A root is copied whole only when its views cover most of it.
    whole = {key for key, (root, used) in roots.items() if 2 * used >= root.nbytes}
    starts: dict[int, int] = {}
    layout, offset = [], 0
    copies: list[tuple[int, np.ndarray]] = []
    for array, (source, within) in zip(arrays, placed):
        if source is not array and id(source) in whole:
            if id(source) not in starts:
                offset = -(-offset // 64) * 64
                starts[id(source)] = offset
                copies.append((offset, source))
                offset += source.nbytes
            layout.append((starts[id(source)] + within, array.nbytes))
        else:
            offset = -(-offset // 64) * 64  # aligned, so every view is aligned for its dtype
            layout.append((offset, array.nbytes))
            copies.append((offset, array))
            offset += array.nbytes
    shared = _shared_bytes(offset)
    for start, array in copies:  # torch copies release the GIL
        source = torch.from_numpy(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        shared[start : start + array.nbytes].copy_(source)
    return data, shared, layout


def _shared_bytes(size: int) -> torch.Tensor:
    """An uninitialised uint8 tensor in shared memory (allocated there, not copied there)."""
    try:
        return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(size))
    except (AttributeError, RuntimeError):  # a torch without the private constructor
        return torch.empty(size, dtype=torch.uint8).share_memory_()


def load_outputs(data: bytes, shared: torch.Tensor | None, layout: list[tuple[int, int]]) -> list[Any]:
    """Inverse of `dump_outputs`; arrays are views of the shared buffer (kept alive by them)."""
    if shared is None:
        return pickle.loads(data)
    flat = shared.numpy()
    return pickle.loads(data, buffers=[flat[start : start + size] for start, size in layout])


def _worker_main(load_kwargs: dict[str, Any], worker: int, device: str, jobs: Any, results: Any) -> None:
    """A worker process: load the model on `device`, then run every batch taken from `jobs`.

    Consecutive batches of one call run as one stream (two queued on the device while the host
    finishes the previous one); the stream ends when the queue is momentarily empty.
    """
    from bge_core.loading import load_model

    # Output buffers are handed over by name: passing file descriptors would need a round trip to
    # this process's resource-sharer thread (and its GIL) for every batch.
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        engine = load_model(**load_kwargs, device=device).engine
        torch.set_grad_enabled(False)
    except BaseException as error:  # noqa: BLE001 - reported to the caller, which raises it
        results.put(("failed", worker, _portable(error)))
        return
    results.put(("ready", worker, None))
    outbox: queue.Queue = queue.Queue(maxsize=4)
    shared_memory = _shared_memory_is_ample()

    def send() -> None:
        while (item := outbox.get()) is not None:
            call, indices, counts, outputs = item
            try:
                if shared_memory:
                    payload = dump_outputs(outputs)
                else:  # little shared memory: everything through the pipe
                    payload = (pickle.dumps(outputs, protocol=pickle.HIGHEST_PROTOCOL), None, [])
                results.put(("out", worker, (call, indices, counts, *payload)))
            except BaseException as error:  # noqa: BLE001 - e.g. an output that does not pickle
                results.put(("error", worker, (call, _portable(error))))

    sender = threading.Thread(target=send, name="bge-send", daemon=True)
    sender.start()
    failed: set[int] = set()
    message = jobs.get()
    while message is not None:
        call = message[1]
        if call in failed:  # the rest of a call that already failed here
            message = jobs.get()
            continue
        batches = _Batches(jobs, message)

        def deliver(indices: list[int], outputs: list[Any], call: int = call) -> None:
            # Copying into shared memory happens on the sender thread, beside the next launches.
            outbox.put((call, indices, (engine.forward_calls, engine.rows_forwarded), outputs))

        try:
            engine.drive(iter(batches), message[2], deliver, _NoBar())
        except BaseException as error:  # noqa: BLE001 - sent back to the caller
            failed.add(call)
            results.put(("error", worker, (call, _portable(error))))
        message = batches.following if batches.following is not _NOTHING else jobs.get()
    outbox.put(None)  # shut down: send what is done, then stop the sender
    sender.join(timeout=30)


_NOTHING = object()


class _Batches:
    """Consecutive batches of one call, for as long as the queue has them ready; `following` is
    the message that ended the run (another call's batch, or None to shut down)."""

    def __init__(self, jobs: Any, first: tuple) -> None:
        self.jobs, self.first, self.following = jobs, first, _NOTHING

    def __iter__(self) -> Iterator[tuple[list[int], list[TokenizedItem]]]:
        yield self.first[3], self.first[4]
        while True:
            try:
                message = self.jobs.get_nowait()
            except queue.Empty:
                return
            if message is None or message[1] != self.first[1]:
                self.following = message
                return
            yield message[3], message[4]


def _shared_memory_is_ample() -> bool:
    """Whether /dev/shm can hold many batches' outputs. Containers often give it 64 MB, and a full
    tmpfs kills its writer with SIGBUS; there outputs are pickled whole through the pipe instead."""
    if os.environ.get(SHARED_MEMORY_ENV) == "0":
        return False
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize >= 2 << 30


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

    `scheduler` is an engine loaded in this process (on the CPU) that only tokenizes and forms the
    batches, exactly as the workers' engines would; it never runs the model.

    Example:
        >>> pool = ProcessDevicePool(scheduler, dict(name_or_path=path, dtype="bf16"), ["cuda:0", "cuda:1"])
        >>> outputs = pool.run(texts, max_length=512, options={}, truncate=True, token_budget=None)
    """

    def __init__(self, scheduler: Any, load_kwargs: dict[str, Any], devices: list[str], packed: bool,
                 token_budget: int) -> None:
        self.scheduler = scheduler
        self.devices = [str(d) for d in devices]
        self.device = torch.device(self.devices[0])
        self.packed = packed
        self.token_budget = token_budget
        self.closed = False
        self._counts = [(0, 0)] * len(self.devices)  # (batches, rows) each worker has run, as it last said
        self._lock = threading.Lock()
        self._calls = itertools.count(1)
        context = torch.multiprocessing.get_context("spawn")
        self._jobs = context.Queue(maxsize=4 * len(self.devices))
        self._results = context.Queue()
        # At exit, unsent jobs are dropped instead of blocking the interpreter's shutdown.
        self._jobs.cancel_join_thread()
        self._processes = [
            context.Process(target=_worker_main, args=(load_kwargs, i, d, self._jobs, self._results), daemon=True,
                            name=f"bge-device-{d}")
            for i, d in enumerate(self.devices)
        ]
        for process in self._processes:
            process.start()
        ready = 0
        while ready < len(self.devices):
            kind, _, error = self._next_result(START_TIMEOUT)  # type: ignore[misc]
            if kind == "failed":
                self.close()
                raise error
            ready += kind == "ready"

    @property
    def family(self) -> Family:
        return self.scheduler.family

    @property
    def forward_calls(self) -> int:
        return sum(calls for calls, _ in self._counts)

    @property
    def rows_forwarded(self) -> int:
        return sum(rows for _, rows in self._counts)

    @property
    def rows_by_worker(self) -> list[int]:
        """Rows each device's worker has run."""
        return [rows for _, rows in self._counts]

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
    ) -> list[Any]:
        """`Engine.run` spread over every device's worker; outputs in input order."""
        if not items:
            return []
        with self._lock:
            if self.closed:
                raise RuntimeError(f"the workers for {', '.join(self.devices)} have stopped; load the model again")
            self._check_alive()
            return self._run(items, max_length, options, truncate, token_budget or self.token_budget, show_progress)

    def _run(self, items: list[Any], max_length: int, options: dict[str, Any], truncate: bool, budget: int,
             show_progress: bool) -> list[Any]:
        call = next(self._calls)
        results: list[Any] = [None] * len(items)
        failure: list[BaseException] = []
        stop = threading.Event()

        def feed() -> None:
            try:
                for indices, rows in self.scheduler.batches(items, max_length, options, truncate, budget):
                    if stop.is_set():
                        return
                    self._put(("batch", call, options, indices, rows), stop)
            except BaseException as error:  # noqa: BLE001 - raised by the caller below
                failure.append(error)
                stop.set()

        feeder = threading.Thread(target=feed, name="bge-feed", daemon=True)
        feeder.start()
        remaining = len(items)
        with tqdm(total=len(items), disable=not show_progress, desc="encode") as bar:
            while remaining and not failure:
                message = self._next_result(None, stop)
                if message is None:
                    continue
                kind, worker, payload = message
                if not isinstance(payload, tuple) or payload[0] != call:  # left over from an earlier call
                    continue
                if kind == "error":
                    failure.append(payload[1])
                    stop.set()
                    continue
                _, indices, (calls, rows), data, shared, layout = payload
                for index, output in zip(indices, load_outputs(data, shared, layout)):
                    results[index] = output
                remaining -= len(indices)
                bar.update(len(indices))
                self._counts[worker] = (calls, rows)
        feeder.join()
        if failure:
            with contextlib.suppress(queue.Empty):  # drop this call's batches still waiting
                while True:
                    self._jobs.get_nowait()
            raise failure[0]
        return results

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
