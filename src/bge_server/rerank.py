"""Reranking in both wire shapes: TEI's (``texts`` → every item by score) and Cohere/Jina's
(``documents`` → ``{results: [{index, relevance_score, document?}]}`` with ``top_n``)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from bge_server.errors import ApiError
from bge_server.schemas import RerankRequest, check_direction, text_inputs
from bge_server.service import Answer, context, respond, scored, truncate_of


def _documents(value: Any) -> Any:
    """Cohere and Jina accept documents as strings or as ``{"text": …}`` objects."""
    if isinstance(value, list):
        return [d["text"] if isinstance(d, dict) and isinstance(d.get("text"), str) else d for d in value]
    return value


async def rerank_response(body: RerankRequest, request: Request, *, cohere: bool) -> Response:
    """`rerank_answer` written with TEI's timing headers."""
    return respond(request, await rerank_answer(body, request, cohere=cohere))


async def rerank_answer(body: RerankRequest, request: Request, *, cohere: bool) -> Answer:
    """Scores of `body.query` with each text or document, sorted best first, in the shape asked for.

    TEI: ``[{"index", "score", "text"?}]``, every item (``raw_scores`` gives logits, else sigmoid).
    Cohere: ``{"id", "results": [{"index", "relevance_score", "document"?: {"text"}}], "model"}``, the
    best `top_n` (all when absent).
    """
    ctx = context(request)
    served = ctx.models.reranker(body.model)
    if not isinstance(body.query, str):
        raise ApiError("Validation", "`query` must be a string")
    field = "documents" if cohere else "texts"
    raw = _documents(body.documents) if cohere else body.texts
    texts, _ = text_inputs(raw, field, limit=ctx.config.max_client_batch_size)
    check_direction(body.truncation_direction)
    got = await scored(request, served, [(body.query, t) for t in texts], sigmoid=not body.raw_scores,
                       truncate=truncate_of(ctx, body.truncate))
    scores = got.rows.scores
    if any(s != s for s in scores):  # NaN: TEI reports it as a backend error
        raise ApiError("Backend", "the model returned NaN scores")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable").tolist()
    if not cohere:
        value: Any = [{"index": i, "score": scores[i], **({"text": texts[i]} if body.return_text else {})}
                      for i in order]
        return Answer(value, got)
    if body.top_n is not None:
        order = order[: body.top_n]
    results = [{"index": i, "relevance_score": scores[i]} for i in order]
    if body.return_documents:
        for result in results:
            result["document"] = {"text": texts[result["index"]]}
    return Answer({"id": str(uuid.uuid4()), "results": results, "model": served.name}, got)
