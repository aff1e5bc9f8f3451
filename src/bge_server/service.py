"""What the routes of every API family share: the app's context, running requests through the
batchers, and turning engine outputs into wire values."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from bge_core import BgeCoreError
from bge_server.batcher import CallTimes
from bge_server.config import ServerConfig
from bge_server.errors import ApiError
from bge_server.metrics import Metrics
from bge_server.models import Columns, EmbedKey, EmbedRows, ModelSet, ScoreRows, ServedEmbedder, ServedReranker

try:  # several times faster for large float arrays; the standard library otherwise
    import orjson
except ImportError:  # pragma: no cover - orjson comes with most FastAPI installs
    orjson = None

#: TEI's prompt names mapped onto the model's query / passage instruction.
PROMPTS = {"query": "query", "document": "document", "passage": "document", "corpus": "document"}
#: Where the `Gate` notes in a request's ASGI scope when the request came in (``perf_counter``).
STARTED = "bge.started"


@dataclass
class Context:
    """Everything a route needs, stored on ``app.state.context``."""

    config: ServerConfig
    models: ModelSet
    metrics: Metrics


def context(request: Request) -> Context:
    return request.app.state.context


class FastJSON(Response):
    """JSON response that writes numpy arrays and floats directly (orjson where installed)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if orjson is not None:  # `default` takes what orjson's numpy path does not (e.g. strided views)
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)
        return json.dumps(content, default=_plain, separators=(",", ":")).encode()


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def truncate_of(ctx: Context, value: bool | None) -> bool:
    """A request's ``truncate``; None means the server's ``--auto-truncate``."""
    return ctx.config.auto_truncate if value is None else value


def prompt_of(name: str | None) -> str | None:
    """``None`` / ``"query"`` / ``"document"`` for a TEI ``prompt_name``."""
    if name is None:
        return None
    if name not in PROMPTS:
        raise ApiError("Validation", f"unknown prompt_name {name!r}; expected one of {sorted(PROMPTS)}")
    return PROMPTS[name]


async def embed_rows(request: Request, served: ServedEmbedder, texts: list[str], key: EmbedKey,
                     times: CallTimes | None = None) -> EmbedRows:
    """Rows of `texts` from the model's batcher (`times` gets where they spent their time); core's input
    errors become 422, its failures 424.

    Example:
        >>> rows = await embed_rows(request, served, ["a query"], EmbedKey(None, True, True), CallTimes())
        >>> rows.dense.shape, rows.tokens.tolist()
        ((1, 1024), [5])
    """
    return await _submitted(request, served, key, texts, times)


async def scored_pairs(request: Request, served: ServedReranker, pairs: list[tuple[str, str]], *, sigmoid: bool,
                       truncate: bool, times: CallTimes | None = None) -> ScoreRows:
    """Scores of (query, text) pairs from the reranker's batcher, as `embed_rows`.

    Example:
        >>> (await scored_pairs(request, served, [("q", "a passage")], sigmoid=True, truncate=True)).scores
        [0.73]
    """
    return await _submitted(request, served, (sigmoid, truncate), pairs, times)


async def _submitted(request: Request, served: ServedEmbedder | ServedReranker, key: Any, items: list[Any],
                     times: CallTimes | None) -> Any:
    metrics = context(request).metrics
    (metrics.embed_count if served.kind == "embedding" else metrics.predict_count).inc(len(items))
    try:
        return await served.batcher.submit(key, items, request, times)
    except (ValueError, TypeError) as error:
        raise ApiError("Validation", str(error)) from None
    except BgeCoreError as error:
        raise ApiError("Backend", str(error)) from None


@dataclass
class Answer:
    """An inference route's result before it is written: its JSON value, and what TEI's headers report of it."""

    value: Any
    served: ServedEmbedder | ServedReranker
    characters: int
    rows: Columns
    times: CallTimes


def respond(request: Request, answer: Answer) -> Response:
    """The answer as JSON with TEI's response headers; its figures go to TEI's request metrics (`record`).

    Example:
        >>> respond(request, Answer([[0.1, 0.2]], served, 5, rows, CallTimes())).headers["x-compute-characters"]
        '5'
    """
    return FastJSON(answer.value, headers=record(request, answer))


def record(request: Request, answer: Answer) -> dict[str, str]:
    """TEI's response headers of an answered inference request, after its figures went to TEI's metrics: its
    inputs to ``te_embed_success`` / ``te_predict_success``, each input's tokens to ``te_request_input_length``,
    the request's per-input times to ``te_request_{tokenization,queue,inference}_duration``.

    The headers, whole milliseconds as TEI sends them: `x-compute-time` and `x-total-time` (since the request
    came in), `x-compute-characters` and `x-compute-tokens` (of every input, the tokens as the engine ran them),
    and per input on average `x-tokenization-time` (its engine call's, until the call's first inputs were
    tokenized), `x-queue-time` (waiting for an engine call) and `x-inference-time` (the rest of the call).

    Example:
        >>> record(request, Answer(value, served, 11, rows, CallTimes(0.0004, 0.0021)))["x-compute-tokens"]
        '4'
    """
    rows, times = answer.rows, answer.times
    now = time.perf_counter()
    total = now - request.scope.get(STARTED, now)
    tokenizing = float(np.mean(rows.tokenization_s)) if rows.tokenization_s is not None and len(rows) else 0.0
    inference = max(times.call_s - tokenizing, 0.0)
    metrics = context(request).metrics
    (metrics.embed_success if answer.served.kind == "embedding" else metrics.predict_success).inc(len(rows))
    if rows.tokens is not None:
        for count in rows.tokens:
            metrics.input_length.observe(count)
    metrics.tokenization_duration.observe(tokenizing)
    metrics.queue_duration.observe(times.queue_s)
    metrics.inference_duration.observe(inference)
    handle = answer.served.embedder if answer.served.kind == "embedding" else answer.served.reranker
    return {
        "x-compute-type": f"{'gpu' if 'cuda' in str(handle.device) else 'cpu'}+optimized",
        "x-compute-time": _ms(total),
        "x-compute-characters": str(answer.characters),
        "x-compute-tokens": str(0 if rows.tokens is None else int(np.sum(rows.tokens))),
        "x-total-time": _ms(total),
        "x-tokenization-time": _ms(tokenizing),
        "x-queue-time": _ms(times.queue_s),
        "x-inference-time": _ms(inference),
    }


def _ms(seconds: float) -> str:
    return str(int(seconds * 1000))


def characters(texts: list[str]) -> int:
    """Characters of `texts` (TEI's x-compute-characters counts Unicode characters).

    Example:
        >>> characters(["大熊猫", "ab"])
        5
    """
    return sum(map(len, texts))


def dense_matrix(rows: EmbedRows, dimensions: int | None, normalize: bool) -> np.ndarray:
    """(n, dim) float32 dense vectors; with `dimensions`, the first that many components
    (re-normalised when `normalize`), as TEI and OpenAI slice Matryoshka-style."""
    assert rows.dense is not None, "dense vectors were not asked for"
    matrix = rows.dense.astype(np.float32, copy=False)
    if dimensions is not None:
        if dimensions > matrix.shape[1]:
            raise ApiError("Validation", f"dimensions {dimensions} > the model's {matrix.shape[1]}")
        matrix = np.ascontiguousarray(matrix[:, :dimensions])  # orjson writes it directly, not through lists
        if normalize:
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            matrix = matrix / np.maximum(norms, 1e-12)
    return matrix


def sparse_items(weights: dict[int, float]) -> list[dict[str, Any]]:
    """TEI's sparse shape: ``[{"index": token_id, "value": w}]`` in id order."""
    return [{"index": int(i), "value": float(weights[i])} for i in sorted(weights)]


def require_m3(served: ServedEmbedder, route: str) -> None:
    if served.embedder.family != "m3":
        raise ApiError("Validation", f"model {served.name!r} is a {served.embedder.family} model; "
                                     f"{route} needs BGE-M3 (sparse and ColBERT heads)")
