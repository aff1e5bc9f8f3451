"""TEI's routes with TEI's request and response shapes (and its response headers, `service.record`), plus
``/embed_m3`` (dense + sparse + ColBERT)."""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from bge_server.errors import ApiError
from bge_server.models import EmbedKey
from bge_server.rerank import rerank_answer, rerank_response
from bge_server.schemas import (
    DecodeRequest,
    EmbedRequest,
    M3Request,
    PredictRequest,
    RerankRequest,
    SimilarityRequest,
    SparseRequest,
    TokenizeRequest,
    VertexRequest,
    check_direction,
    text_inputs,
)
from bge_server.service import (
    Answer,
    FastJSON,
    context,
    dense_matrix,
    embedded,
    prompt_of,
    record,
    require_m3,
    respond,
    scored,
    sparse_items,
    truncate_of,
)

router = APIRouter()


@router.post("/embed")
async def embed(body: EmbedRequest, request: Request) -> Response:
    """TEI: ``{inputs, normalize, truncate, prompt_name, dimensions}`` → ``[[f32]]`` (2-D even for one string)."""
    return respond(request, await embed_answer(body, request))


async def embed_answer(body: EmbedRequest, request: Request) -> Answer:
    """/embed's answer before it is written (also each /vertex embed instance's).

    Example:
        >>> (await embed_answer(EmbedRequest(inputs=["a query"]), request)).value.shape
        (1, 1024)
    """
    ctx = context(request)
    served = ctx.models.embedding(body.model)
    texts, _ = text_inputs(body.inputs, limit=ctx.config.max_client_batch_size)
    check_direction(body.truncation_direction)
    key = EmbedKey(prompt_of(body.prompt_name), body.normalize, truncate_of(ctx, body.truncate))
    got = await embedded(request, served, texts, key)
    return Answer(dense_matrix(got.rows, body.dimensions, body.normalize), got)


@router.post("/")
@router.post("/invocations")
async def default_route(request: Request) -> Response:
    """TEI's model-type route (huggingface_hub's InferenceClient posts here): embed on an embedding
    server, rerank when the body is a rerank body or only rerankers are served."""
    try:
        data = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError("Validation", f"malformed JSON body: {error}", status=400) from None
    if not isinstance(data, dict):
        raise ApiError("Validation", f"the body must be a JSON object, got {type(data).__name__}")
    ctx = context(request)
    if ctx.models.embedders and "query" not in data:
        return await embed(EmbedRequest.model_validate(data), request)
    return await rerank(RerankRequest.model_validate(data), request)


@router.post("/vertex")
async def vertex(body: VertexRequest, request: Request) -> Response:
    """TEI's Vertex AI route: ``{"instances": [body, …]}`` → ``{"predictions": [answer, …]}``. An instance with
    ``query`` and ``texts`` is a /rerank body; any other is an /embed body where an embedding model is served
    (the one its ``model`` names, else the first), else a /predict body. Instances run concurrently, so
    they share engine calls; the first failing instance decides the error."""
    ctx = context(request)
    answer_of = {RerankRequest: partial(rerank_answer, cohere=False), EmbedRequest: embed_answer,
                 PredictRequest: predict_answer}
    bodies: list[Any] = []
    for i, instance in enumerate(body.instances):
        if not isinstance(instance, dict):
            raise ApiError("Validation", f"`instances[{i}]` must be a JSON object, got {type(instance).__name__}")
        route = (RerankRequest if "query" in instance and "texts" in instance
                 else EmbedRequest if ctx.models.embedders else PredictRequest)
        try:
            bodies.append(route.model_validate(instance))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ApiError("Validation", f"`instances[{i}]`{' ' + where if where else ''}: {first['msg']}") from None
    results = await asyncio.gather(*(answer_of[type(b)](b, request) for b in bodies), return_exceptions=True)
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        raise failed
    for answer in results:  # each instance counts in TEI's request metrics, as its own route would count it
        record(request, answer.computed)
    return FastJSON({"predictions": [answer.value for answer in results]})


@router.post("/embed_sparse")
async def embed_sparse(body: SparseRequest, request: Request) -> Response:
    """BGE-M3 lexical weights: ``[[{"index": token_id, "value": w}]]`` (zeros and special tokens dropped)."""
    ctx = context(request)
    served = ctx.models.embedding(body.model)
    require_m3(served, "/embed_sparse")
    texts, _ = text_inputs(body.inputs, limit=ctx.config.max_client_batch_size)
    check_direction(body.truncation_direction)
    key = EmbedKey(prompt_of(body.prompt_name), True, truncate_of(ctx, body.truncate), dense=False, sparse=True)
    got = await embedded(request, served, texts, key)
    return respond(request, Answer([sparse_items(row.sparse or {}) for row in got.rows], got))


@router.post("/embed_all")
async def embed_all(body: SparseRequest, request: Request) -> Response:
    """TEI: every token's last-layer state, special tokens included, unpooled and unnormalised:
    ``[[[f32]]]`` (inputs × tokens × hidden size)."""
    ctx = context(request)
    served = ctx.models.embedding(body.model)
    texts, _ = text_inputs(body.inputs, limit=ctx.config.max_client_batch_size)
    check_direction(body.truncation_direction)
    key = EmbedKey(prompt_of(body.prompt_name), True, truncate_of(ctx, body.truncate), dense=False, token_states=True)
    got = await embedded(request, served, texts, key)
    return respond(request, Answer(got.rows.token_states, got))


@router.post("/embed_m3")
async def embed_m3(body: M3Request, request: Request) -> Response:
    """Dense, sparse and ColBERT vectors of each input from one forward:
    ``[{"dense": [f32], "sparse": [{"index", "value"}], "colbert": [[f32]]}]`` (only the parts asked for)."""
    ctx = context(request)
    served = ctx.models.embedding(body.model)
    require_m3(served, "/embed_m3")
    if not (body.dense or body.sparse or body.colbert):
        raise ApiError("Validation", "nothing to compute: set at least one of dense, sparse, colbert")
    texts, _ = text_inputs(body.inputs, limit=ctx.config.max_client_batch_size)
    check_direction(body.truncation_direction)
    key = EmbedKey(prompt_of(body.prompt_name), body.normalize, truncate_of(ctx, body.truncate),
                   body.dense, body.sparse, body.colbert)
    got = await embedded(request, served, texts, key)
    out: list[dict[str, Any]] = []
    for row in got.rows:
        item: dict[str, Any] = {}
        if body.dense:
            item["dense"] = row.dense
        if body.sparse:
            item["sparse"] = sparse_items(row.sparse or {})
        if body.colbert:
            item["colbert"] = np.asarray(row.colbert, dtype=np.float32)
        out.append(item)
    return respond(request, Answer(out, got))


@router.post("/rerank")
async def rerank(body: RerankRequest, request: Request) -> Response:
    """TEI body ``{query, texts}`` → every text sorted by score; Cohere body ``{query, documents, top_n}``
    → ``{results: [{index, relevance_score}]}``."""
    return await rerank_response(body, request, cohere=body.documents is not None)


@router.post("/predict")
async def predict(body: PredictRequest, request: Request) -> Response:
    """TEI's classifier route on a reranker: a ``[query, passage]`` pair → ``[{"score", "label"}]``,
    a list of pairs → ``[[{"score", "label"}]]``."""
    return respond(request, await predict_answer(body, request))


async def predict_answer(body: PredictRequest, request: Request) -> Answer:
    """/predict's answer before it is written (also each /vertex instance's on a reranker-only server).

    Example:
        >>> (await predict_answer(PredictRequest(inputs=["q", "a passage"]), request)).value
        [{'score': 0.73, 'label': 'LABEL_0'}]
    """
    ctx = context(request)
    served = ctx.models.reranker(body.model)
    check_direction(body.truncation_direction)
    single = isinstance(body.inputs, list) and len(body.inputs) == 2 and all(isinstance(x, str) for x in body.inputs)
    pairs = [body.inputs] if single else body.inputs
    if not pairs:
        raise ApiError("Empty", "`inputs` cannot be empty")
    if not isinstance(pairs, list) or len(pairs) > ctx.config.max_client_batch_size:
        raise ApiError("Validation", "`inputs` must be a [query, passage] pair or a list of such pairs, at most "
                                     f"{ctx.config.max_client_batch_size}")
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ApiError("Validation", f"`inputs[{i}]` must be a [query, passage] pair of strings")
    got = await scored(request, served, [tuple(p) for p in pairs], sigmoid=not body.raw_scores,
                       truncate=truncate_of(ctx, body.truncate))
    labelled = [[{"score": score, "label": "LABEL_0"}] for score in got.rows.scores]
    return Answer(labelled[0] if single else labelled, got)


@router.post("/similarity")
async def similarity(body: SimilarityRequest, request: Request) -> Response:
    """Cosine similarity of ``inputs.source_sentence`` with each of ``inputs.sentences`` → ``[f32]``."""
    ctx = context(request)
    served = ctx.models.embedding(body.model)
    params = body.parameters
    if not body.inputs.sentences:
        raise ApiError("Empty", "`inputs.sentences` cannot be empty")
    texts, _ = text_inputs([body.inputs.source_sentence, *body.inputs.sentences], "inputs.sentences",
                           limit=ctx.config.max_client_batch_size + 1)
    if params is not None:
        check_direction(params.truncation_direction)
    key = EmbedKey(prompt_of(params.prompt_name if params else None), True,
                   truncate_of(ctx, params.truncate if params else None))
    got = await embedded(request, served, texts, key)
    matrix = dense_matrix(got.rows, None, True)
    return respond(request, Answer((matrix[1:] @ matrix[0]).astype(np.float32), got))


def _handle(ctx: Any, name: str | None) -> Any:
    """The embedder or reranker whose tokenizer a /tokenize or /decode request means."""
    if name is None:
        first = (ctx.models.embedders or ctx.models.rerankers)[0]
    else:
        first = next((m for m in ctx.models.all() if name in (m.name, m.model_id)), None)
        if first is None:
            ctx.models.embedding(name)  # raises the ModelNotFound error with the served names
    return first.embedder if first.kind == "embedding" else first.reranker


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    """``[[{"id", "text", "special", "start", "stop"}]]``; spans are character offsets into each input."""
    ctx = context(request)
    if body.prompt_name is not None:
        raise ApiError("Validation", "prompt_name is not supported on /tokenize; send the text as the model reads it")
    texts, _ = text_inputs(body.inputs, limit=ctx.config.max_client_batch_size)
    handle = _handle(ctx, body.model)
    tokens = await run_in_threadpool(handle.tokenize, texts, add_special_tokens=body.add_special_tokens)
    return FastJSON([
        [{"id": t.id, "text": t.text, "special": t.special, "start": t.start, "stop": t.stop} for t in row]
        for row in tokens
    ])


@router.post("/decode")
async def decode(body: DecodeRequest, request: Request) -> Response:
    """Token ids (one row or several) → ``[str]``."""
    ctx = context(request)
    rows = [body.ids] if body.ids and isinstance(body.ids[0], int) else body.ids
    if not rows:
        raise ApiError("Empty", "`ids` cannot be empty")
    try:
        texts = await run_in_threadpool(_handle(ctx, body.model).decode, rows,
                                        skip_special_tokens=body.skip_special_tokens)
    except (ValueError, TypeError) as error:
        raise ApiError("Validation", str(error)) from None
    return FastJSON(texts)

