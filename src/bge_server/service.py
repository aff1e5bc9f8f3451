"""What the routes of every API family share: the app's context, running requests through the
batchers, and turning engine outputs into wire values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from bge_core import BgeCoreError
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


async def embed_rows(request: Request, served: ServedEmbedder, texts: list[str], key: EmbedKey) -> EmbedRows:
    """Rows of `texts` from the model's batcher; core's input errors become 422, its failures 424."""
    try:
        return await served.batcher.submit(key, texts, request)
    except (ValueError, TypeError) as error:
        raise ApiError("Validation", str(error)) from None
    except BgeCoreError as error:
        raise ApiError("Backend", str(error)) from None


async def pair_scores(request: Request, served: ServedReranker, query: str, texts: list[str], *, sigmoid: bool,
                      truncate: bool) -> list[float]:
    """Scores of (query, text) pairs from the reranker's batcher."""
    try:
        return await served.batcher.submit((sigmoid, truncate), [(query, t) for t in texts], request)
    except (ValueError, TypeError) as error:
        raise ApiError("Validation", str(error)) from None
    except BgeCoreError as error:
        raise ApiError("Backend", str(error)) from None


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
