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
from bge_server.models import EmbedKey, EmbedRows, ModelSet, ServedEmbedder, ServedReranker

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


@dataclass
class Computed:
    """A request's results from its model's batcher (`EmbedRows` or `ScoreRows`), with what TEI's headers and
    metrics report of them: the characters of its inputs and where they spent their time."""

    served: ServedEmbedder | ServedReranker
    rows: Any
    characters: int
    times: CallTimes


@dataclass
class Answer:
    """An inference route's result before it is written: its JSON value and what it was computed from."""

    value: Any
    computed: Computed


async def embedded(request: Request, served: ServedEmbedder, texts: list[str], key: EmbedKey) -> Computed:
    """`EmbedRows` of `texts` from the model's batcher; core's input errors become 422, its failures 424.

    Example:
        >>> got = await embedded(request, served, ["a query"], EmbedKey(None, True, True))
        >>> got.rows.dense.shape, got.rows.tokens, got.characters
        ((1, 1024), [5], 7)
    """
    return await _computed(request, served, key, texts)


async def scored(request: Request, served: ServedReranker, pairs: list[tuple[str, str]], *, sigmoid: bool,
                 truncate: bool) -> Computed:
    """`ScoreRows` of (query, text) pairs from the reranker's batcher, as `embedded`.

    Example:
        >>> (await scored(request, served, [("q", "a passage")], sigmoid=True, truncate=True)).rows.scores
        [0.73]
    """
    return await _computed(request, served, (sigmoid, truncate), pairs)


async def _computed(request: Request, served: ServedEmbedder | ServedReranker, key: Any, items: list[Any]) -> Computed:
    metrics = context(request).metrics
    (metrics.embed_count if served.kind == "embedding" else metrics.predict_count).inc(len(items))
    times = CallTimes()
    try:
        rows = await served.batcher.submit(key, items, request, times)
    except (ValueError, TypeError) as error:
        raise ApiError("Validation", str(error)) from None
    except BgeCoreError as error:
        raise ApiError("Backend", str(error)) from None
    # TEI counts Unicode characters, a pair's query once per pair.
    characters = sum(len(item) if isinstance(item, str) else len(item[0]) + len(item[1]) for item in items)
    return Computed(served, rows, characters, times)


def respond(request: Request, answer: Answer) -> Response:
    """The answer as JSON with TEI's response headers; its figures go to TEI's request metrics (`record`).

    Example:
        >>> respond(request, Answer([[0.1, 0.2]], computed)).headers["x-compute-characters"]
        '7'
    """
    return FastJSON(answer.value, headers=record(request, answer.computed))


def record(request: Request, computed: Computed) -> dict[str, str]:
    """TEI's response headers of an answered inference request, after its figures went to TEI's metrics: its
    inputs to ``te_embed_success`` / ``te_predict_success``, each input's tokens to ``te_request_input_length``,
    the request's per-input times to ``te_request_{tokenization,queue,inference}_duration``.

    The headers, whole milliseconds as TEI sends them: `x-compute-time` and `x-total-time` (since the request
    came in), `x-compute-characters` and `x-compute-tokens` (of every input, the tokens as the engine ran them),
    and per input on average `x-tokenization-time` (its engine call's, until the call's first inputs were
    tokenized), `x-queue-time` (waiting for an engine call) and `x-inference-time` (the rest of the call).

    Example:
        >>> record(request, computed)["x-compute-tokens"]
        '5'
    """
    rows, times, served = computed.rows, computed.times, computed.served
    now = time.perf_counter()
    total = now - request.scope.get(STARTED, now)
    tokenizing = sum(rows.tokenization_s) / max(len(rows), 1)
    inference = max(times.call_s - tokenizing, 0.0)
    metrics = context(request).metrics
    (metrics.embed_success if served.kind == "embedding" else metrics.predict_success).inc(len(rows))
    for count in rows.tokens:
        metrics.input_length.observe(count)
    metrics.tokenization_duration.observe(tokenizing)
    metrics.queue_duration.observe(times.queue_s)
    metrics.inference_duration.observe(inference)
    handle = served.embedder if served.kind == "embedding" else served.reranker
    return {
        "x-compute-type": f"{'gpu' if 'cuda' in str(handle.device) else 'cpu'}+optimized",
        "x-compute-time": _ms(total),
        "x-compute-characters": str(computed.characters),
        "x-compute-tokens": str(sum(rows.tokens)),
        "x-total-time": _ms(total),
        "x-tokenization-time": _ms(tokenizing),
        "x-queue-time": _ms(times.queue_s),
        "x-inference-time": _ms(inference),
    }


def _ms(seconds: float) -> str:
    return str(int(seconds * 1000))


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
