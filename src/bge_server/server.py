"""`serve`: load the models, listen, print the address, and stop cleanly on SIGTERM / Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator

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
    (to stdout, flushed) once the socket accepts connections.

    Example:
        >>> serve(ServerConfig(models=["BAAI/bge-m3"], port=8080))
    """
    if config.gil_switch_interval_ms is not None:
        sys.setswitchinterval(config.gil_switch_interval_ms / 1e3)
    app = create_app(config)
    sock = bind(config.host, config.port)
    uv_config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=None,
                               lifespan="on", server_header=False)
    server = uvicorn.Server(uv_config)
    names = ", ".join(m.name for m in app.state.context.models.all())
    message = f"bge serve: listening on {url_of(sock)} ({names})"
    original_startup = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original_startup(sockets=sockets)
        (announce or _print)(message)

    server.startup = startup  # type: ignore[method-assign]
    server.capture_signals = lambda: _graceful_signals(server)  # type: ignore[method-assign]
    server.run(sockets=[sock])
    if not server.started:
        raise SystemExit(1)


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
