"""Operations routes: ``/info``, the health probes and ``/metrics``."""

from __future__ import annotations

import contextlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from bge_server.models import ServedEmbedder, ServedReranker
from bge_server.service import FastJSON, context

router = APIRouter()

try:
    VERSION = version("bge-plugins")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    VERSION = "0+unknown"


def _model_type(model: ServedEmbedder | ServedReranker) -> dict[str, Any]:
    if isinstance(model, ServedReranker):
        return {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
    return {"embedding": {"pooling": model.embedder.spec.pooling}}


def _describe(model: ServedEmbedder | ServedReranker) -> dict[str, Any]:
    if isinstance(model, ServedReranker):
        handle: Any = model.reranker
        extra: dict[str, Any] = {"family": handle.family}
    else:
        handle = model.embedder
        extra = {"family": handle.family, "dim": handle.dim, "sparse": handle.family == "m3",
                 "colbert_dim": handle.colbert_dim}
    return {"served_model_name": model.name, "model_id": model.model_id, "model_type": _model_type(model),
            "model_dtype": handle.dtype, "device": handle.device, "max_input_length": handle.max_length, **extra}


@router.get("/info")
async def info(request: Request) -> Response:
    """TEI's ``/info`` fields for the first model, and ``models``: every served model."""
    ctx = context(request)
    first = ctx.models.all()[0]
    described = _describe(first)
    return FastJSON({
        "model_id": first.model_id,
        "model_sha": None,
        "model_dtype": described["model_dtype"],
        "served_model_name": first.name,
        "model_type": described["model_type"],
        "max_concurrent_requests": ctx.config.max_concurrent_requests,
        "max_input_length": described["max_input_length"],
        "max_batch_tokens": ctx.config.max_batch_tokens,
        "max_batch_requests": ctx.config.batch_items,
        "max_client_batch_size": ctx.config.max_client_batch_size,
        "auto_truncate": ctx.config.auto_truncate,
        "tokenization_workers": None,
        "version": VERSION,
        "sha": None,
        "docker_label": None,
        "models": [_describe(m) for m in ctx.models.all()],
    })


@router.get("/health")
@router.get("/ping")
@router.get("/")
async def health() -> Response:
    """200 once every model is loaded (the server listens only after that)."""
    return Response(status_code=200)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format: this server's processes, and the engine host's calls where one runs the
    models (`bge_engine_*`)."""
    ctx = context(request)
    text = ctx.metrics.render()
    host = next((m.host for m in ctx.models.all() if m.host is not None), None)
    if host is not None:
        with contextlib.suppress(RuntimeError):  # an engine host that has stopped: this process's figures
            text += await host.call("", "metrics")
    return Response(text, media_type="text/plain; version=0.0.4")
