"""The engine host: one process that owns every served model and runs the engine calls of the server.

Why a process of its own: each torch operation releases and takes back the GIL, so an engine that
shares a process with a busy event loop waits for the GIL hundreds of times per call (a call of 20
short queries took ~70 ms instead of ~2 ms on an H200 under 64 clients). Here the HTTP processes run
nothing but their event loops, with no other thread, and talk to the host over a Unix socket with
asyncio; the host runs nothing but the engine. Every HTTP process (``--workers N``) connects to the
same host, which merges the requests of all of them into shared engine calls, so the models are
loaded once and the device sees one stream of batches.

Two engine calls run at once (`ENGINE_CALLS`, each on a thread of the host): while one call's batch runs
on the device, the other tokenizes, packs or builds its rows, so the device does not wait for the host's
Python between merged calls (at 64 single-query clients the host, not the device, was the limit). The
main thread alone reads and writes the sockets and merges the queued runs; the engine is thread-safe.

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
import queue
import selectors
import signal
import socket
import struct
import threading
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bge_server.config import ServerConfig, calls_from_env
from bge_server.metrics import EngineMetrics, Metrics

FRAME = struct.Struct("!I")


#: Engine calls the host runs at once: one on the device while the next one's host work is done.
ENGINE_CALLS = calls_from_env("BGE_SERVE_ENGINE_CALLS", 2)


def _frame(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(body)) + body


class _Peer:
    """One connected server process, as the host sees it: bytes received so far, complete messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def messages(self) -> list[Any]:
        found = []
        while len(self.buffer) >= FRAME.size:
            (size,) = FRAME.unpack_from(self.buffer)
            if len(self.buffer) < FRAME.size + size:
                break
            found.append(pickle.loads(bytes(self.buffer[FRAME.size : FRAME.size + size])))
            del self.buffer[: FRAME.size + size]
        return found

    def reply(self, call_id: int, ok: bool, value: Any) -> None:
        self.send(_reply_frame(call_id, ok, value))

    def send(self, data: bytes) -> None:
        """Send a framed reply (from the host's main thread, which owns the sockets). A reply that the
        socket's buffer takes at once costs one call; the rest of a larger one is sent blocking."""
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # that server process has gone; its requests went with it
        if sent == len(data):
            return
        try:
            self.sock.setblocking(True)
            self.sock.sendall(memoryview(data)[sent:])
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                self.sock.setblocking(False)


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
    ready.send(("ready", [describe(m) for m in models.all()]))
    serve_calls(listener, by_name, config.batch_items, stop=None if parent is None else parent.sentinel,
                metrics=EngineMetrics())


def serve_calls(listener: socket.socket, by_name: dict[str, Any], max_items: int, stop: Any = None,
                metrics: EngineMetrics | None = None) -> None:
    """The host's loop: accept server processes on `listener`, merge their runs, run up to
    `ENGINE_CALLS` engine calls at once on threads, answer other calls at once; return when `stop`
    (a file descriptor, e.g. the parent process's sentinel) becomes readable. Each engine call's size and
    time go to `metrics`.

    Example:
        >>> serve_calls(listener, {"BAAI/bge-m3": served_model}, 512, stop=parent.sentinel)  # doctest: +SKIP
    """
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    if stop is not None:
        selector.register(stop, selectors.EVENT_READ, "stop")
    wake_reader, wake_writer = socket.socketpair()  # an engine thread's "a call finished" to this loop
    wake_reader.setblocking(False)
    selector.register(wake_reader, selectors.EVENT_READ, "wake")
    finished: queue.SimpleQueue[list[tuple[_Peer, bytes]]] = queue.SimpleQueue()
    calls = ThreadPoolExecutor(ENGINE_CALLS, thread_name_prefix="bge-engine-call")
    free = ENGINE_CALLS
    pending: collections.deque[tuple[_Peer, Any]] = collections.deque()
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "stop":
                    return
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        wake_reader.recv(1 << 12)
                    continue
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
                    peer.sock.close()
                    pending = collections.deque(item for item in pending if item[0] is not peer)
                    continue
                peer.buffer += chunk
                for message in peer.messages():
                    if message[0] == "run":
                        pending.append((peer, message))
                    else:
                        _answer_call(peer, message, by_name, metrics)
            while True:  # replies of finished calls, sent by this thread (it owns the sockets)
                try:
                    replies = finished.get_nowait()
                except queue.Empty:
                    break
                free += 1
                for peer, data in replies:
                    peer.send(data)
            while pending and free:
                free -= 1
                calls.submit(_run_group, _take_group(pending, max_items), by_name, finished, wake_writer, metrics)
    finally:
        calls.shutdown(wait=False, cancel_futures=True)
        selector.close()
        wake_reader.close()
        wake_writer.close()


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


def _run_group(group: list[tuple[_Peer, Any]], by_name: dict[str, Any], finished: queue.SimpleQueue,
               wake: socket.socket, metrics: EngineMetrics | None = None) -> None:
    """One engine call over a group's merged inputs (on an engine thread); each run's reply frame goes
    to `finished` for the main thread to send."""
    replies: list[tuple[_Peer, bytes]] = []
    try:
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
            return
        position = 0
        for peer, message in group:
            count = len(message[4])
            replies.append((peer, _reply_frame(message[1], True, results[position : position + count])))
            position += count
    finally:
        finished.put(replies)
        with contextlib.suppress(OSError):
            wake.send(b"x")


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
        try:
            while True:
                (size,) = FRAME.unpack(await reader.readexactly(FRAME.size))
                call_id, ok, value = pickle.loads(await reader.readexactly(size))
                future = self._waiting.get(call_id)
                if future is not None and not future.done():
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
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
