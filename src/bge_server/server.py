"""`serve`: load the models, listen, print the address, and stop cleanly on SIGTERM / Ctrl-C."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection

import uvicorn

from bge_server.app import create_app
from bge_server.config import ServerConfig


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free port.

    Example:
        >>> bind("127.0.0.1", 0).getsockname()[1] > 0
        True
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(config: ServerConfig, *, announce: Callable[[str], None] | None = None, log_level: str = "warning") -> None:
    """Serve until SIGTERM or Ctrl-C: then stop accepting, finish the requests in flight and return.

    The models are loaded first; the line ``bge serve: listening on http://HOST:PORT`` is printed
    (to stdout, flushed) once the socket accepts connections. With ``config.processes`` > 1, that many
    server processes share the socket, each with its own copy of the models (see `serve_processes`).

    Example:
        >>> serve(ServerConfig(models=["BAAI/bge-m3"], port=8080))
    """
    sock = bind(config.host, config.port)
    if config.processes == 1 and not config.engine_process:
        message = _listening(config, sock)
        _serve_on(config, sock, lambda: (announce or _print)(message), log_level)
        return
    from bge_server.engine_host import start_host

    with tempfile.TemporaryDirectory(prefix="bge-serve-") as directory:
        host, path, _ = start_host(config, directory)
        front = dataclasses.replace(config, engine_host=path)
        try:
            if config.processes > 1:
                serve_processes(front, sock, announce=announce, log_level=log_level)
            else:
                message = _listening(config, sock)
                _serve_on(front, sock, lambda: (announce or _print)(message), log_level)
        finally:  # the HTTP side has finished its requests; now the engine may go
            host.terminate()
            host.join(30)
            if host.is_alive():
                host.kill()


def _listening(config: ServerConfig, sock: socket.socket) -> str:
    names = config.served_model_names + [*config.models, *config.rerankers][len(config.served_model_names):]
    layout = f", {config.processes} processes" if config.processes > 1 else ""
    if config.processes > 1 or config.engine_process:
        layout += ", engine host process"
    return f"bge serve: listening on {url_of(sock)} ({', '.join(names)}{layout})"


def _serve_on(config: ServerConfig, sock: socket.socket, ready: Callable[[], None], log_level: str) -> None:
    """Load the models, serve on `sock` in this process, call `ready` once it accepts connections."""
    if config.gil_switch_interval_ms is not None:
        sys.setswitchinterval(config.gil_switch_interval_ms / 1e3)
    app = create_app(config)
    uv_config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=None,
                               lifespan="on", server_header=False)
    server = uvicorn.Server(uv_config)
    original_startup = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original_startup(sockets=sockets)
        ready()

    server.startup = startup  # type: ignore[method-assign]
    server.capture_signals = lambda: _graceful_signals(server)  # type: ignore[method-assign]
    server.run(sockets=[sock])
    if not server.started:
        raise SystemExit(1)


def _process_main(config: ServerConfig, sock: socket.socket, ready: Connection, log_level: str) -> None:
    """One of several server processes (spawned): serve on the shared socket, say when ready."""
    # Ctrl-C reaches every process of the terminal's group; the parent's SIGTERM ends each one gracefully.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from bge_server.engine_host import name_process

    name_process("bge-http")
    _serve_on(config, sock, lambda: ready.send(os.getpid()), log_level)


def serve_processes(config: ServerConfig, sock: socket.socket, *, announce: Callable[[str], None] | None = None,
                    log_level: str = "warning") -> None:
    """`config.processes` HTTP server processes on one listening socket; the kernel spreads connections
    over them.

    Each runs its own event loop, so the per-request Python work of many small requests runs on several
    cores at once; their engine calls go to the engine host at ``config.engine_host``, which merges them.
    Metrics are shared through prometheus_client's multiprocess files, so /metrics counts every process.
    The address is announced once every process accepts connections; SIGTERM or Ctrl-C stops all of them
    gracefully (status 0). A process that dies while serving is replaced.

    Example:
        >>> serve_processes(ServerConfig(models=["BAAI/bge-small-en-v1.5"], processes=4), bind("127.0.0.1", 8080))
    """
    spawn = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    metrics_dir = tempfile.mkdtemp(prefix="bge-serve-metrics-")
    previous_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the spawned processes
    stopping = _Flag()
    children: list[multiprocessing.process.BaseProcess] = []
    listeners: list[Connection] = []

    def start() -> tuple[multiprocessing.process.BaseProcess, Connection]:
        receiver, sender = spawn.Pipe(duplex=False)
        child = spawn.Process(target=_process_main, args=(config, sock, sender, log_level), daemon=False,
                              name="bge-serve")
        child.start()
        sender.close()
        return child, receiver

    def stop(*_: object) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for _ in range(config.processes):
            child, receiver = start()
            children.append(child)
            listeners.append(receiver)
        for child, receiver in zip(children, listeners):
            while not receiver.poll(0.2):  # loading the models; a process that fails to start ends the server
                if stopping.is_set():
                    return
                if not child.is_alive():
                    raise SystemExit(f"bge serve: a server process failed to start (exit code {child.exitcode})")
            receiver.recv()
        (announce or _print)(_listening(config, sock))
        while not stopping.wait(0.2):
            for i, child in enumerate(children):
                if not child.is_alive() and not stopping.is_set():
                    _print(f"bge serve: server process {child.pid} ended (exit code {child.exitcode}); restarting it")
                    _mark_dead(child.pid)
                    children[i], listeners[i] = start()
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: each finishes its requests in flight
        deadline = time.monotonic() + 60
        for child in children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if previous_dir is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = previous_dir
        shutil.rmtree(metrics_dir, ignore_errors=True)
        sock.close()


class _Flag:
    """A stop flag that a signal handler may set while the main thread waits on it (a threading.Event
    would deadlock: its lock is held by the waiting main thread when the handler runs)."""

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def is_set(self) -> bool:
        return self.value

    def wait(self, seconds: float) -> bool:
        if not self.value:
            time.sleep(seconds)
        return self.value


def _mark_dead(pid: int | None) -> None:
    """Drop a dead process's live gauges from the shared metrics."""
    from prometheus_client import multiprocess

    if pid is not None:
        multiprocess.mark_process_dead(pid)


@contextlib.contextmanager
def _graceful_signals(server: uvicorn.Server) -> Iterator[None]:
    """SIGTERM / SIGINT start uvicorn's graceful shutdown (a second one forces it). Unlike uvicorn's own
    handler the signal is not raised again afterwards, so a clean shutdown exits with status 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print(message: str) -> None:
    print(message, flush=True)
    sys.stdout.flush()
