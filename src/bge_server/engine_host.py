"""The engine host: one process that owns every served model and runs the engine calls of the server.

Why a process of its own: each torch operation releases and takes back the GIL, so an engine that
shares a process with a busy event loop waits for the GIL hundreds of times per call (a call of 20
short queries took ~70 ms instead of ~2 ms on an H200 under 64 clients). Here the HTTP processes run
nothing but their event loops, with no other thread, and talk to the host over a Unix socket with
asyncio; the host runs nothing but the engine. Every HTTP process (``--workers N``) connects to the
same host, which merges the requests of all of them into shared engine calls, so the models are
loaded once and the device sees one stream of batches.

Two engine calls run at once (each on a thread of the host; one where every model is on the CPU, see
`ServerConfig.calls_for`; `BGE_SERVE_ENGINE_CALLS` overrides it): while one call's batch runs
on the device, the other tokenizes, packs or builds its rows, so the device does not wait for the host's
Python between merged calls (at 64 single-query clients the host, not the device, was the limit). The
main thread reads the sockets and queues the runs; an engine thread that comes free takes every queued
run it can merge, makes the call and writes the replies itself, one send per server process (no hand-back
to the main thread: one thread wake-up less in every request's path). The engine is thread-safe. With
`ServerConfig.rejoin_wait`, an engine thread holds its next call for the inputs it just answered, as each
HTTP process's `MicroBatcher` does (the host merges what the HTTP processes merged).

Wire format: each message is a 4-byte big-endian length and a pickle.
Requests: ``("run", call_id, model, key, items)`` (merged with other runs of the same model and key)
and ``("call", call_id, model, method, args)`` (answered at once; tokenize, decode,
describe, metrics). Replies: ``(call_id, ok, value_or_exception)``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import multiprocessing
import os
import pickle
import select
import selectors
import signal
import socket
import struct
import threading
import time
from collections.abc import Hashable
from typing import Any

from bge_server.batcher import rejoin_hold
from bge_server.config import CALLS_IN_FLIGHT, ServerConfig, calls_from_env
from bge_server.metrics import EngineMetrics, Metrics

FRAME = struct.Struct("!I")


#: Overrides the engine calls the host runs at once (for measuring).
ENGINE_CALLS_ENV = "BGE_SERVE_ENGINE_CALLS"


def _frame(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(body)) + body


class _Peer:
    """One connected server process, as the host sees it: bytes received so far, complete messages, and
    a lock that keeps replies (sent from the engine threads and the main thread) whole and keeps them
    off a socket once it is closed (its descriptor number may already belong to a new connection)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.lock = threading.Lock()
        self.closed = False

    def messages(self) -> list[Any]:
        return _take_messages(self.buffer)

    def reply(self, call_id: int, ok: bool, value: Any) -> None:
        self.send(_reply_frame(call_id, ok, value))

    def send(self, data: bytes) -> None:
        """Send a framed reply from any thread. The socket stays non-blocking (the main thread reads it):
        a reply larger than its buffer waits for room between parts."""
        view = memoryview(data)
        with self.lock:
            while view and not self.closed:
                try:
                    view = view[self.sock.send(view) :]
                except BlockingIOError:
                    select.select([], [self.sock], [], 1.0)
                except OSError:
                    return  # that server process has gone; its requests went with it

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.sock.close()


def _take_messages(buffer: bytearray) -> list[Any]:
    """The complete messages at the start of `buffer`, unpickled and removed from it (a part of the next
    one stays for more bytes)."""
    found = []
    while len(buffer) >= FRAME.size:
        (size,) = FRAME.unpack_from(buffer)
        if len(buffer) < FRAME.size + size:
            break
        found.append(pickle.loads(buffer[FRAME.size : FRAME.size + size]))
        del buffer[: FRAME.size + size]
    return found


def _reply_frame(call_id: int, ok: bool, value: Any) -> bytes:
    try:
        return _frame((call_id, ok, value))
    except Exception as error:  # noqa: BLE001 - an unpicklable exception still gets an answer
        return _frame((call_id, False, RuntimeError(f"{type(value).__name__}: {value}; ({error})")))


def describe(model: Any) -> dict[str, Any]:
    """What an HTTP process needs to know of a served model without loading it."""
    handle = model.embedder if model.kind == "embedding" else model.reranker
    out = {"kind": model.kind, "name": model.name, "model_id": model.model_id, "family": handle.family,
           "dtype": handle.dtype, "device": handle.device, "max_length": handle.max_length}
    if model.kind == "embedding":
        out.update(dim=handle.dim, colbert_dim=handle.colbert_dim, pooling=handle.spec.pooling)
    return out


def name_process(name: str) -> None:
    """Show this process as `name` in ps / top (Linux; at most 15 characters), so a server's processes
    can be told apart.

    Example:
        >>> name_process("bge-engine")
    """
    with contextlib.suppress(OSError):
        with open("/proc/self/comm", "w") as comm:
            comm.write(name[:15])


def host_main(config: ServerConfig, path: str, ready: Any) -> None:
    """Entry point of the host process (spawned): load the models, then serve calls until the parent ends."""
    from bge_server.models import ModelSet

    name_process("bge-engine")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the host stops (after the HTTP side)
    try:
        models = ModelSet.load(config, Metrics())
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which exits with it
        ready.send(("failed", f"{type(error).__name__}: {error}"))
        return
    by_name = {m.name: m for m in models.all()}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(256)
    parent = multiprocessing.parent_process()
    described = [describe(m) for m in models.all()]
    ready.send(("ready", described))
    calls = engine_calls(config, described)
    serve_calls(listener, by_name, config.batch_items, stop=None if parent is None else parent.sentinel,
                metrics=EngineMetrics(), engine_calls=calls, rejoin_wait=config.batcher_rejoin_wait())


def engine_calls(config: ServerConfig, described: list[dict[str, Any]]) -> int:
    """Engine calls the host runs at once for its models: one on the device while the next one's host work is
    done, or one at a time where every model is on the CPU (`ServerConfig.calls_for`); `BGE_SERVE_ENGINE_CALLS`
    overrides it.

    Example:
        >>> engine_calls(ServerConfig(models=["m"]), [{"device": "cpu"}, {"device": "cuda:0"}])
        2
    """
    return calls_from_env(ENGINE_CALLS_ENV, max(config.calls_for(model["device"]) for model in described))


def serve_calls(listener: socket.socket, by_name: dict[str, Any], max_items: int, stop: Any = None,
                metrics: EngineMetrics | None = None, engine_calls: int = CALLS_IN_FLIGHT,
                rejoin_wait: float = 0.0) -> None:
    """The host's loop: accept server processes on `listener`, queue their runs for `engine_calls` engine
    threads (each merges what is queued into one engine call and sends the replies itself), answer other
    calls at once; return when `stop` (a file descriptor, e.g. the parent process's sentinel) becomes
    readable. Each engine call's size and time go to `metrics`; `rejoin_wait` is `MicroBatcher`'s.

    Example:
        >>> serve_calls(listener, {"BAAI/bge-m3": served_model}, 512, stop=parent.sentinel)  # doctest: +SKIP
    """
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    if stop is not None:
        selector.register(stop, selectors.EVENT_READ, "stop")
    runs = _Runs(max_items, rejoin_wait)
    for number in range(engine_calls):
        threading.Thread(target=_engine_thread, args=(runs, by_name, metrics), name=f"bge-engine-call-{number}",
                         daemon=True).start()
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "stop":
                    return
                if key.data is None:
                    conn, _ = listener.accept()
                    conn.setblocking(False)
                    selector.register(conn, selectors.EVENT_READ, _Peer(conn))
                    continue
                peer: _Peer = key.data
                try:
                    chunk = peer.sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    selector.unregister(peer.sock)
                    runs.drop(peer)
                    peer.close()
                    continue
                peer.buffer += chunk
                queued = []
                for message in peer.messages():
                    if message[0] == "run":
                        queued.append((peer, message))
                    else:
                        _answer_call(peer, message, by_name, metrics)
                runs.add(queued)
    finally:
        runs.stop()
        selector.close()


class _Runs:
    """Runs waiting for an engine call: the main thread adds them, the engine threads take them merged.

    An engine thread takes work only when it is free, so runs that arrive while every engine call is busy
    wait here and join the next call together; with `rejoin_wait`, a thread that just answered some inputs
    holds its next call until as many are queued again (see `MicroBatcher`).
    """

    def __init__(self, max_items: int, rejoin_wait: float = 0.0) -> None:
        self.max_items = max_items
        self.rejoin_wait = rejoin_wait
        self.pending: collections.deque[tuple[_Peer, Any]] = collections.deque()
        self.changed = threading.Condition()
        self.stopping = False

    def add(self, queued: list[tuple[_Peer, Any]]) -> None:
        if queued:
            with self.changed:
                self.pending.extend(queued)
                if self.rejoin_wait:  # every thread: one may hold for rejoining inputs while another idles
                    self.changed.notify_all()
                else:
                    self.changed.notify()

    def queued_items(self) -> int:
        """Inputs of the queued runs (the caller holds `changed`)."""
        return sum(len(message[4]) for _, message in self.pending)

    def rejoin_after(self, answered: int, started: float, ended: float) -> tuple[int, float] | None:
        """What the next `take` of a thread that answered `answered` inputs in a call from `started` to `ended`
        holds for (`rejoin_hold`), or None without `rejoin_wait`."""
        if not self.rejoin_wait:
            return None
        with self.changed:
            queued = self.queued_items()
        return rejoin_hold(self.rejoin_wait, queued, answered, self.max_items, started, ended)

    def drop(self, peer: _Peer) -> None:
        """Forget the queued runs of a server process that has gone."""
        with self.changed:
            self.pending = collections.deque(item for item in self.pending if item[0] is not peer)

    def take(self, rejoin: tuple[int, float] | None = None) -> list[tuple[_Peer, Any]] | None:
        """The next group of runs to merge (waits for one; with `rejoin` from `rejoin_after`, also for that
        many inputs until its deadline); None once the host stops."""
        with self.changed:
            if rejoin is not None:
                inputs, deadline = rejoin
                while not self.stopping and self.queued_items() < inputs:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self.changed.wait(remaining)
            while not self.pending and not self.stopping:
                self.changed.wait()
            if self.stopping:
                return None
            group = _take_group(self.pending, self.max_items)
            if self.pending:  # more than one call's worth, or runs that do not merge: another thread's turn
                self.changed.notify()
            return group

    def stop(self) -> None:
        with self.changed:
            self.stopping = True
            self.changed.notify_all()


def _engine_thread(runs: _Runs, by_name: dict[str, Any], metrics: EngineMetrics | None) -> None:
    rejoin = None
    while (group := runs.take(rejoin)) is not None:
        started = time.perf_counter()
        try:
            _run_group(group, by_name, metrics)
        except Exception as error:  # noqa: BLE001 - a fault past the model call must not end this thread
            for peer, message in group:  # a run already answered ignores a second reply
                peer.reply(message[1], False, RuntimeError(f"the engine host failed: {error}"))
        rejoin = runs.rejoin_after(sum(len(message[4]) for _, message in group), started, time.perf_counter())


def _answer_call(peer: _Peer, message: tuple, by_name: dict[str, Any], metrics: EngineMetrics | None = None) -> None:
    _, call_id, name, method, args = message
    try:
        if method == "describe_all":
            peer.reply(call_id, True, [describe(m) for m in by_name.values()])
            return
        if method == "metrics":  # the host's own figures, for the /metrics of an HTTP process
            peer.reply(call_id, True, b"" if metrics is None else metrics.render())
            return
        model = by_name[name]
        handle = model.embedder if model.kind == "embedding" else model.reranker
        positional, options = args
        if method in ("tokenize", "decode"):
            value: Any = getattr(handle, method)(*positional, **options)
        else:
            raise ValueError(f"the engine host has no call {method!r}")
        peer.reply(call_id, True, value)
    except Exception as error:  # noqa: BLE001 - handed to the waiting request
        peer.reply(call_id, False, error)


def _take_group(pending: collections.deque, max_items: int) -> list[tuple[_Peer, Any]]:
    """The oldest queued run and every queued run of the same model and options, up to `max_items`
    inputs (taken out of `pending`)."""
    first_peer, first = pending.popleft()
    group = [(first_peer, first)]
    total = len(first[4])
    keep: collections.deque = collections.deque()
    while pending:
        peer, message = pending.popleft()
        if message[2:4] == first[2:4] and total + len(message[4]) <= max_items:
            group.append((peer, message))
            total += len(message[4])
        else:
            keep.append((peer, message))
    pending.extend(keep)
    return group


def _run_group(group: list[tuple[_Peer, Any]], by_name: dict[str, Any], metrics: EngineMetrics | None = None
               ) -> None:
    """One engine call over a group's merged inputs (on an engine thread); each run's reply goes straight
    back to its server process from this thread."""
    first = group[0][1]
    model = by_name.get(first[2])
    items = [item for _, message in group for item in message[4]]
    try:
        if model is None:
            raise KeyError(f"model {first[2]!r} is not loaded in the engine host")
        started = time.perf_counter()
        results = model.run(first[3], items)
        if metrics is not None:
            metrics.call_duration.observe(time.perf_counter() - started)
            metrics.batch_size.observe(len(items))
    except Exception as error:  # noqa: BLE001 - each server process retries its jobs alone (MicroBatcher)
        replies = [(peer, _reply_frame(message[1], False, error)) for peer, message in group]
    else:
        replies, position = [], 0
        for peer, message in group:
            count = len(message[4])
            replies.append((peer, _reply_frame(message[1], True, results[position : position + count])))
            position += count
    by_peer: dict[_Peer, list[bytes]] = {}
    for peer, frame in replies:
        by_peer.setdefault(peer, []).append(frame)
    for peer, frames in by_peer.items():  # one send a server process: its event loop wakes once for them all
        peer.send(b"".join(frames))


class HostClient:
    """A server process's connection to the engine host: async engine calls from the event loop, and
    blocking calls (model descriptions, tokenize, decode) from any thread.

    Example:
        >>> client = HostClient("/tmp/bge-engine.sock")
        >>> client.describe()[0]["name"]
        'BAAI/bge-m3'
        >>> await client.start(); await client.run("BAAI/bge-m3", key, ["a query"])
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._blocking: socket.socket | None = None
        self._lock = threading.Lock()

    async def start(self) -> None:
        """Open the asynchronous channel (on the running event loop)."""
        reader, self._writer = await asyncio.open_unix_connection(self.path, limit=1 << 24)
        self._reader_task = asyncio.create_task(self._read(reader))

    async def stop(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()
        if self._blocking is not None:
            self._blocking.close()

    async def run(self, model: str, key: Hashable, items: list[Any]) -> list[Any]:
        """The engine's results for `items` of `model` under options `key` (merged by the host)."""
        return await self._ask(("run", next(self._ids), model, key, items))

    async def call(self, model: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """`method(*args, **kwargs)` on the model's engine handle (tokenize, decode)."""
        return await self._ask(("call", next(self._ids), model, method, (args, kwargs)))

    async def _ask(self, message: tuple) -> Any:
        if self._writer is None or self._reader_task is None:
            raise RuntimeError("the engine host connection is not open")
        if self._reader_task.done():  # the host closed the connection: no answer would ever come
            raise RuntimeError("the engine host has stopped")
        future = asyncio.get_running_loop().create_future()
        self._waiting[message[1]] = future
        self._writer.write(_frame(message))
        try:
            return await future
        finally:
            self._waiting.pop(message[1], None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buffer = bytearray()
        try:
            while chunk := await reader.read(1 << 20):  # whatever has arrived: often several replies at once
                buffer += chunk
                for call_id, ok, value in _take_messages(buffer):
                    future = self._waiting.get(call_id)
                    if future is not None and not future.done():
                        if ok:
                            future.set_result(value)
                        else:
                            future.set_exception(value)
        except ConnectionError:
            pass
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(RuntimeError("the engine host has stopped"))

    def call_blocking(self, model: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Like `call`, from a thread (a connection of its own, one call at a time)."""
        with self._lock:
            if self._blocking is None:
                self._blocking = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._blocking.connect(self.path)
            self._blocking.sendall(_frame(("call", 0, model, method, (args, kwargs))))
            (size,) = FRAME.unpack(_read_exactly(self._blocking, FRAME.size))
            _, ok, value = pickle.loads(_read_exactly(self._blocking, size))
        if not ok:
            raise value
        return value


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise RuntimeError("the engine host has stopped")
        data += chunk
    return bytes(data)


def start_host(config: ServerConfig, directory: str) -> tuple[multiprocessing.process.BaseProcess, str, list[dict]]:
    """Spawn the engine host, wait until its models are loaded; (process, socket path, model descriptions).

    Example:
        >>> process, path, models = start_host(ServerConfig(models=["BAAI/bge-m3"]), "/tmp/bge")
    """
    path = os.path.join(directory, "engine.sock")
    spawn = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    receiver, sender = spawn.Pipe(duplex=False)
    process = spawn.Process(target=host_main, args=(config, path, sender), daemon=True, name="bge-engine-host")
    process.start()
    sender.close()
    while not receiver.poll(0.2):
        if not process.is_alive():
            raise SystemExit(f"bge serve: the engine host ended while loading the models (exit code "
                             f"{process.exitcode})")
    status, payload = receiver.recv()
    if status != "ready":
        process.join(10)
        raise SystemExit(f"bge serve: cannot load the models: {payload}")
    return process, path, payload
