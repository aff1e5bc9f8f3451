"""The POST routes the Gate answers itself (`DirectRoutes`) give exactly FastAPI's answers: the same
status and body for good requests and for every kind of bad one, and FastAPI is not entered for them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bge_server import ServerConfig, create_app
from bge_server.app import ServerApp

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HOT = {"/embed", "/embed_all", "/embed_sparse", "/embed_m3", "/rerank", "/predict", "/similarity", "/tokenize",
       "/decode", "/", "/invocations", "/v1/embeddings", "/embeddings", "/v1/rerank", "/v2/rerank", "/vertex"}

#: (path, JSON body or raw bytes): answers, client errors of each kind, and both API shapes.
REQUESTS: list[tuple[str, Any]] = [
    ("/embed", {"inputs": ["a short query", "a longer passage about the subject"]}),
    ("/embed", {"inputs": "one string", "normalize": False, "dimensions": 8, "prompt_name": "query"}),
    ("/embed", {"inputs": []}),
    ("/embed", {"inputs": ["ok", 7]}),
    ("/embed", {"inputs": [[1, 2]]}),
    ("/embed", {"inputs": "x", "normalize": "maybe"}),
    ("/embed", {"inputs": "x", "dimensions": 0}),
    ("/embed", {"inputs": ["x"] * 9}),
    ("/embed", {"inputs": "x", "model": "not-served"}),
    ("/embed", {"inputs": "x", "truncation_direction": "Left"}),
    ("/embed", b'{"inputs": ["a",'),
    ("/embed", b""),
    ("/embed", b"[1, 2]"),
    ("/embed_sparse", {"inputs": ["sparse weights of this text"]}),
    ("/embed_all", {"inputs": ["every token's state"], "prompt_name": "query"}),
    ("/embed_all", {"inputs": []}),
    ("/embed_m3", {"inputs": ["all three"], "colbert": True}),
    ("/embed_m3", {"inputs": ["none"], "dense": False, "sparse": False}),
    ("/rerank", {"query": "q", "texts": ["first passage", "second one"], "return_text": True}),
    ("/rerank", {"query": "q", "documents": ["first passage", "second one"], "top_n": 1}),
    ("/rerank", {"query": "q", "texts": []}),
    ("/v1/rerank", {"query": "q", "documents": ["a", "b", "c"], "return_documents": True}),
    ("/v2/rerank", {"query": "q", "documents": "not a list"}),
    ("/predict", {"inputs": ["a query", "a passage"]}),
    ("/predict", {"inputs": [["q", "p"], ["q"]]}),
    ("/similarity", {"inputs": {"source_sentence": "s", "sentences": ["a", "b"]}}),
    ("/similarity", {"inputs": {"sentences": ["a"]}}),
    ("/tokenize", {"inputs": ["tokenize me"]}),
    ("/decode", {"ids": [1, 2, 3]}),
    ("/decode", {}),
    ("/", {"inputs": ["the model-type route"]}),
    ("/invocations", {"query": "q", "texts": ["a"]}),
    ("/", b"[1,"),
    ("/v1/embeddings", {"input": ["openai"], "model": "bge-m3"}),
    ("/v1/embeddings", {"input": "openai", "encoding_format": "base64"}),
    ("/embeddings", {"input": [], "model": "bge-m3"}),
    ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}),
    ("/v1/embeddings", b"{oops"),
    ("/vertex", {"instances": [{"inputs": "embed me"}, {"query": "q", "texts": ["a", "b"]}]}),
    ("/vertex", {"instances": [{"inputs": "ok"}, {"inputs": []}]}),
    ("/vertex", {"instances": [{"inputs": "x", "normalize": "maybe"}]}),
    ("/vertex", {"instances": "not a list"}),
]


@pytest.fixture(scope="module")
def app(m3_path: str, cross_encoder_path: str) -> ServerApp:
    config = ServerConfig(models=[m3_path], rerankers=[cross_encoder_path], served_model_names=["bge-m3"],
                          device="cpu", max_client_batch_size=8)
    made = create_app(config)
    assert isinstance(made, ServerApp) and made.gate is not None
    return made


async def answers(app: ServerApp) -> list[tuple[int, Any]]:
    out = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        for path, body in REQUESTS:
            sent = {"content": body} if isinstance(body, bytes) else {"json": body}
            response = await client.post(path, headers={"content-type": "application/json"}, **sent)
            out.append((response.status_code, json.loads(response.content)))
    return out


@pytest.fixture(scope="module")
async def both(app: ServerApp) -> AsyncIterator[tuple[list, list, list[str]]]:
    """Answers through the direct routes and through FastAPI (same app, same models), and the paths
    that reached FastAPI in the direct run."""
    assert app.gate is not None
    reached: list[str] = []
    fastapi = app.gate.app

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            reached.append(scope["path"])
        await fastapi(scope, receive, send)

    async with app.router.lifespan_context(app):
        app.gate.app = counted
        direct = await answers(app)
        app.gate.app = fastapi
        saved, app.gate.direct = app.gate.direct, None
        try:
            through_fastapi = await answers(app)
        finally:
            app.gate.direct = saved
    yield direct, through_fastapi, reached


def test_every_post_route_is_direct(app: ServerApp) -> None:
    assert app.gate is not None and app.gate.direct is not None
    assert set(app.gate.direct.routes) == HOT


async def test_direct_answers_equal_fastapis(both: tuple[list, list, list[str]]) -> None:
    direct, through_fastapi, reached = both
    assert reached == []  # no request of the direct run entered FastAPI
    statuses = {status for status, _ in direct}
    assert {200, 400, 404, 422} <= statuses  # the list exercises answers and each kind of client error
    differ = [f"POST {path} {body!r}: {mine} != {theirs}"
              for (path, body), mine, theirs in zip(REQUESTS, direct, through_fastapi, strict=True)
              if without_id(mine) != without_id(theirs)]
    assert not differ, "\n".join(differ)


def without_id(answer: tuple[int, Any]) -> tuple[int, Any]:
    """The answer without a Cohere rerank response's random id."""
    status, body = answer
    return status, {k: v for k, v in body.items() if k != "id"} if isinstance(body, dict) else body


async def test_a_client_that_leaves_while_sending_its_body_is_not_an_error(
        app: ServerApp, caplog: pytest.LogCaptureFixture) -> None:
    parts = iter([{"type": "http.request", "body": b'{"inputs": ["half a bo', "more_body": True},
                  {"type": "http.disconnect"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(parts)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/embed", "raw_path": b"/embed", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1), "server": ("t", 80)}
    with caplog.at_level("ERROR", logger="bge_server"):
        await app(scope, receive, send)
    assert sent[0]["status"] == 499  # nobody reads it
    assert not [r for r in caplog.records if r.levelname == "ERROR"]

