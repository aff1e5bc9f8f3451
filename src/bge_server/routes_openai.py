"""OpenAI's embeddings API and Cohere/Jina's rerank API."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request
from starlette.responses import Response

from bge_server.models import EmbedKey
from bge_server.rerank import rerank_response
from bge_server.schemas import OpenAIEmbeddingRequest, RerankRequest, text_inputs
from bge_server.service import Answer, FastJSON, context, dense_matrix, embedded, respond

router = APIRouter()


@router.post("/v1/embeddings")
@router.post("/embeddings")
async def embeddings(body: OpenAIEmbeddingRequest, request: Request) -> Response:
    """``{input, model, encoding_format, dimensions}`` → ``{"object": "list", "data": [{"embedding", "index"}],
    "model", "usage"}``; base64 is little-endian float32, as the openai SDK decodes it."""
    ctx = context(request)
    served = ctx.models.embedding(body.model)
    texts, _ = text_inputs(body.input, "input", limit=ctx.config.max_client_batch_size)
    got = await embedded(request, served, texts, EmbedKey(None, True, ctx.config.auto_truncate))
    tokens = sum(got.rows.tokens)  # as the engine ran them: no second tokenization
    matrix = dense_matrix(got.rows, body.dimensions, True)
    if body.encoding_format == "base64":
        little = matrix.astype("<f4", copy=False)
        vectors: list = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    else:
        vectors = list(matrix)
    data = [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)]
    body_out = {"object": "list", "data": data, "model": served.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return respond(request, Answer(body_out, got))


@router.post("/v1/rerank")
@router.post("/v2/rerank")
async def rerank(body: RerankRequest, request: Request) -> Response:
    """Cohere/Jina: ``{query, documents, top_n, return_documents}`` → ``{results: [{index, relevance_score}]}``
    (a TEI body with ``texts`` is answered in TEI's shape)."""
    return await rerank_response(body, request, cohere=body.texts is None)


@router.get("/v1/models")
async def models(request: Request) -> Response:
    """OpenAI's model list: every served model."""
    served = context(request).models.all()
    return FastJSON({"object": "list", "data": [
        {"id": m.name, "object": "model", "created": 0, "owned_by": "bge-plugins", "kind": m.kind} for m in served
    ]})


