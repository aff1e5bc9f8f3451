"""`create_app`: the FastAPI application, its gate (API key, payload limit, concurrency limit, metrics)
and the error handlers that answer in each API's shape."""

from __future__ import annotations

import contextlib
import hmac
import inspect
import json
import logging
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bge_server import routes_openai, routes_ops, routes_tei
from bge_server.batcher import ClientGone
from bge_server.config import ServerConfig
from bge_server.errors import ApiError, error_response
from bge_server.metrics import Metrics
from bge_server.models import ModelSet
from bge_server.service import STARTED, Context

log = logging.getLogger("bge_server")

#: Reachable without the API key (TEI's public routes).
PUBLIC = {("GET", "/health"), ("GET", "/metrics"), ("GET", "/ping"), ("GET", "/")}
#: A body over the limit is read and thrown away up to this many bytes (so the client, still sending,
#: gets its 413 instead of a broken pipe); past it the connection is closed.
DRAIN_LIMIT = 64 << 20


class _TooLarge(Exception):
    pass


#: Set in the ASGI scope when a body without Content-Length grew past the payload limit.
TOO_LARGE = "bge.too_large"


#: A direct route: the request → its response (the body, where there is one, read and validated inside).
Handler = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    """The app's POST routes, answered without FastAPI's per-request machinery.

    A small request spent over half of an HTTP process's CPU in FastAPI's and Starlette's layers
    (middleware, routing, dependency solving) around a route that only validates a body. Routes
    declared as ``async def route(body: SomeModel, request: Request) -> Response`` or
    ``async def route(request: Request) -> Response`` are found in the app's route table and called
    here directly: the body is validated by the same pydantic model, and an exception goes to the
    app's own handler for its type, so the answer is the one FastAPI gives. Other routes (GET, and
    any with dependencies or path parameters) stay with FastAPI.

    Args:
        app: the app whose state and exception handlers the routes use.
        routes: its routes (those of the routers it includes without a prefix).

    Example:
        >>> direct = DirectRoutes(app, routes_tei.router.routes)
        >>> "/embed" in direct.routes
        True
    """

    def __init__(self, app: FastAPI, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.routes: dict[str, Handler] = {}
        for route in routes:
            if isinstance(route, APIRoute) and route.methods == {"POST"} and not route.dependencies \
                    and route.path not in self.routes and "{" not in route.path:
                handler = _direct_handler(route.endpoint)
                if handler is not None:
                    self.routes[route.path] = handler

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the request if its path is a direct route; False (nothing read or sent) otherwise."""
        handler = self.routes.get(scope["path"])
        if handler is None:
            return False
        scope["app"] = self.app  # what Request.app reads
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except _TooLarge:
            raise
        except Exception as error:  # noqa: BLE001 - the app's handler for its type answers it
            response = await self._handled(request, error)
        await response(scope, receive, send)
        return True

    async def _handled(self, request: Request, error: Exception) -> Response:
        handlers = self.app.exception_handlers
        for kind in type(error).__mro__:
            if kind in handlers:
                return await handlers[kind](request, error)
        raise error


async def _json_body(request: Request) -> Any:
    """The parsed JSON body; a missing or malformed one raises the validation error FastAPI raises."""
    raw = await request.body()
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        message = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": message}}]) from None


def _direct_handler(endpoint: Callable[..., Awaitable[Response]]) -> Handler | None:
    """The endpoint as a direct route: itself for ``(request: Request)``, a wrapper that reads and
    validates the body for ``(body: Model, request: Request)``; None for any other signature."""
    try:
        hints = typing.get_type_hints(endpoint)
    except (NameError, TypeError):
        return None
    params = list(inspect.signature(endpoint).parameters.values())
    if any(p.default is not inspect.Parameter.empty or p.kind is not p.POSITIONAL_OR_KEYWORD for p in params):
        return None
    types = [hints.get(p.name) for p in params]
    if types == [Request]:
        return endpoint
    model = types[0] if len(types) == 2 and types[1] is Request else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None

    async def with_body(request: Request) -> Response:
        # validated as FastAPI validates a body (from_attributes: the same error messages)
        return await endpoint(model.model_validate(await _json_body(request), from_attributes=True), request)

    return with_body


class Gate:
    """Pure ASGI layer in front of every route: API key (401), body size (413, counted as the body
    arrives, never buffered), requests in flight (429), and the request metrics; then the direct
    routes, or the FastAPI app."""

    def __init__(self, app: ASGIApp, config: ServerConfig, metrics: Metrics,
                 direct: DirectRoutes | None = None) -> None:
        self.app = app
        self.config = config
        self.metrics = metrics
        self.direct = direct
        self.in_flight = 0
        self._expected = f"Bearer {config.api_key}".encode() if config.api_key else None
        self._requests = metrics.request_count.labels("batch")
        self._answered = metrics.request_success.labels("batch")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        headers = dict(scope["headers"])
        if self._expected is not None and (method, path) not in PUBLIC:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                self.metrics.request_failure.labels("unauthorized").inc()
                await _drain(receive, DRAIN_LIMIT)
                await error_response(path, "Unauthorized", "missing or wrong API key (Authorization: Bearer …)")(
                    scope, receive, send)
                return
        if method != "POST":
            await self.app(scope, receive, send)
            return
        limit = self.config.payload_limit
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, int(declared))
            return
        if self.in_flight >= self.config.max_concurrent_requests:
            self.metrics.request_failure.labels("overloaded").inc()
            await _drain(receive, DRAIN_LIMIT)
            await error_response(path, "Overloaded", f"{self.in_flight} requests in flight; the limit is "
                                 f"{self.config.max_concurrent_requests} (--max-concurrent-requests)")(
                scope, receive, send)
            return
        await self._serve(scope, receive, send, limit)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        started_response = False
        status = 500

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    scope[TOO_LARGE] = True  # FastAPI turns a failing body read into a 400; the handler looks here
                    raise _TooLarge()
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started_response, status
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
            await send(message)

        self.in_flight += 1
        self.metrics.in_flight.inc()
        self._requests.inc()
        start = scope[STARTED] = time.perf_counter()
        try:
            if self.direct is None or not await self.direct.answer(scope, counted_receive, tracked_send):
                await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started_response:
                await self._too_large(scope, receive, send, None)
                status = 413
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            self.metrics.request_duration.observe(time.perf_counter() - start)
            if status < 400:
                self._answered.inc()

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, size: int | None) -> None:
        self.metrics.request_failure.labels("payload_too_large").inc()
        shown = f"{size} bytes" if size is not None else "the body"
        await _drain(receive, DRAIN_LIMIT)
        await error_response(scope["path"], "PayloadTooLarge",
                             f"{shown} > the payload limit of {self.config.payload_limit} bytes")(scope, receive, send)


async def _drain(receive: Receive, limit: int) -> None:
    """Read and discard what is left of a request body (at most `limit` bytes; memory O(chunk))."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _validation_message(errors: list[Any]) -> tuple[str, int]:
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        return f"malformed JSON body: {detail.get('ctx', {}).get('error', detail.get('msg'))}", 400
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg')}")
    return "; ".join(parts), 422


def _install_handlers(app: FastAPI, metrics: Metrics) -> None:
    def failed(request: Request, kind: str, message: str, status: int | None = None) -> Response:
        metrics.request_failure.labels(kind.lower()).inc()
        return error_response(request.url.path, kind, message, status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return failed(request, error.kind, error.message, error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        message, status = _validation_message(list(error.errors()))
        return failed(request, "Validation", message, status)

    @app.exception_handler(ValidationError)
    async def invalid_body(request: Request, error: ValidationError) -> Response:
        message, status = _validation_message(list(error.errors()))
        return failed(request, "Validation", message, status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        if request.scope.get(TOO_LARGE):
            limit = request.app.state.context.config.payload_limit
            return failed(request, "PayloadTooLarge", f"the body > the payload limit of {limit} bytes")
        kind = "NotFound" if error.status_code in (404, 405) else "Validation"
        return failed(request, kind, f"{request.method} {request.url.path}: {error.detail}", error.status_code)

    @app.exception_handler(ClientGone)
    @app.exception_handler(ClientDisconnect)  # gone while its body was being read
    async def client_gone(request: Request, error: Exception) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's code for "client closed request"

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return failed(request, "Backend", f"{type(error).__name__}: {error}")


class ServerApp(FastAPI):
    """The FastAPI application with the `Gate` (and through it the direct routes) in front of FastAPI's
    own middleware stack."""

    gate: Gate | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.gate is None:  # not set up by create_app: a plain FastAPI app
            await self._fastapi(scope, receive, send)
        else:
            await self.gate(scope, receive, send)

    async def _fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(config: ServerConfig, models: ModelSet | None = None, metrics: Metrics | None = None) -> FastAPI:
    """The application serving `models` (loaded from `config` when not given).

    Example:
        >>> app = create_app(ServerConfig(models=["BAAI/bge-small-en-v1.5"]))
        >>> uvicorn.run(app, port=8080)
    """
    metrics = metrics or Metrics()
    host = None
    if models is None and config.engine_host is not None:
        from bge_server.engine_host import HostClient

        host = HostClient(config.engine_host)
        models = ModelSet.remote(config, host, metrics)
    models = models or ModelSet.load(config, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if host is not None:
            await host.start()
        for batcher in models.batchers:
            await batcher.start()
        try:
            yield
        finally:
            for batcher in models.batchers:
                await batcher.stop()
            if host is not None:
                await host.stop()

    app = ServerApp(title="bge serve", version=routes_ops.VERSION, lifespan=lifespan)
    app.state.context = Context(config, models, metrics)
    routers = [routes_tei.router, routes_openai.router, routes_ops.router]
    for router in routers:
        app.include_router(router)
    _install_handlers(app, metrics)
    app.gate = Gate(app._fastapi, config, metrics, DirectRoutes(app, [r for router in routers for r in router.routes]))
    return app
