"""Every public entry point that takes text — core, compat and each adapter — behind one calling convention.

An `EntryPoint` builds its object from the session's tiny checkpoints and calls it with a list of raw
items (a batch entry point gets the list; a single-text one gets its only item), returning one plain
result per item: a dense vector, a sparse row (``{token_id: weight}``), a score, or a row id. The
bad-input matrix (test_bad_input_matrix.py) runs every case through this table, so a new adapter class
is covered by adding one line here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: What one result is: "dense" (unit vector), "sparse" (token id → positive weight), "score" (finite
#: float) or "id" (the row id `HybridCollection.add` returns).
Output = str

#: Tag of batch entry points on BGE-M3 that go through core's output memo (dense + sparse kept per text).
MEMO = frozenset({"m3_memo"})


@dataclass
class Models:
    """Checkpoint directories of the session (built once by tests/conftest.py and here)."""

    m3: str
    dense: str
    cross_encoder: str
    llm_embedder: str
    llm_reranker: str
    layerwise: str
    lightweight: str
    milvus_dir: str


@dataclass(frozen=True)
class EntryPoint:
    """One public way in.

    Attributes:
        name: ``framework.Class.method[what is fed]``.
        build: ``build(models, **options)`` → the object; options are ``max_length`` and ``truncate``
            (only passed where `truncate_option` is True).
        call: ``call(obj, items)`` → one plain result per item.
        batch: takes a list (a bad item is named by its index) rather than one text.
        output: kind of each result (see `Output`).
        truncate_option: has a ``truncate=False`` switch (else over-long text is always cut).
        wrap: for inputs that pass through the framework's own Document / Node type first: builds
            them (the framework validates types there), so `call` gets the framework objects.
        bulk: runs the 100,000-texts case: core, and Haystack's document embedder, the adapter doing the
            most per-item work of its own around core (a Document copy per text). The others hand the
            list to core as it is, or in fixed slices (LlamaIndex: 256 texts a call), and are left out
            to keep the suite's time (docs/reliability.md).
        checks_unicode: the adapter or framework refuses text that is not valid Unicode itself
            (everything else reaches core's tokenizer with it).
    """

    name: str
    build: Callable[..., Any]
    call: Callable[[Any, list[Any]], list[Any]]
    batch: bool
    output: Output
    truncate_option: bool = False
    wrap: Callable[[list[Any]], list[Any]] | None = None
    bulk: bool = False
    checks_unicode: bool = False
    tags: frozenset[str] = field(default_factory=frozenset)

    def __str__(self) -> str:
        return self.name


# -- result checks ----------------------------------------------------------------------------------


def check_result(output: Output, result: Any, dim: int | None = None) -> None:
    """Assert one result is well-formed (never silent garbage)."""
    if output == "dense":
        vector = np.asarray(result, dtype=np.float64)
        assert vector.ndim == 1 and vector.size > 0, f"not a vector: {vector.shape}"
        if dim is not None:
            assert vector.size == dim
        assert np.isfinite(vector).all(), "non-finite values in a dense vector"
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-3, f"not unit length: {np.linalg.norm(vector)}"
    elif output == "sparse":
        assert isinstance(result, dict)
        for token, weight in result.items():
            assert isinstance(token, int) and token >= 0, f"bad token id {token!r}"
            assert math.isfinite(weight) and weight > 0, f"bad weight {weight!r}"
    elif output == "score":
        assert isinstance(result, float) and math.isfinite(result), f"bad score {result!r}"
    elif output == "id":
        assert isinstance(result, str) and result
    else:  # pragma: no cover - a typo in the table
        raise AssertionError(f"unknown output kind {output!r}")


# -- builders and callers ---------------------------------------------------------------------------


def _opts(options: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in names and v is not None}


def _dense_rows(array: Any) -> list[np.ndarray]:
    return list(np.asarray(array, dtype=np.float32))


def _sparse_from_compat(row: Any) -> dict[int, float]:
    return {int(k): float(v) for k, v in row.items()}


def _ints(row: dict) -> dict[int, float]:
    return {int(k): float(v) for k, v in row.items()}


def _csr_rows(matrix: Any) -> list[dict[int, float]]:
    matrix = matrix.tocsr()
    return [
        {int(i): float(v) for i, v in zip(matrix.indices[a:b], matrix.data[a:b])}
        for a, b in zip(matrix.indptr[:-1], matrix.indptr[1:])
    ]


def _core(models: Models, **options: Any) -> dict[str, Any]:
    from bge_core import Embedder, Reranker

    mx = options.get("max_length")
    return {
        "m3": Embedder(models.m3, device="cpu", max_length=mx),
        "dense": Embedder(models.dense, device="cpu", max_length=mx),
        "llm": Embedder(models.llm_embedder, device="cpu", max_length=mx),
        "ce": Reranker(models.cross_encoder, device="cpu", max_length=mx),
    }


def _truncate(options: dict[str, Any]) -> bool:
    return options.get("truncate", True)


def core_entry_points() -> list[EntryPoint]:
    def encode_m3(o: dict, items: list) -> list:
        out = o["m3"].encode(items, sparse=True, colbert=True, truncate=o["truncate"])
        for vectors in out.colbert_vectors:
            assert np.isfinite(vectors).all()
        assert len(out.lexical_weights) == len(items)
        return _dense_rows(out.dense)

    def build(models: Models, **options: Any) -> dict:
        return {**_core(models, **options), "truncate": _truncate(options)}

    return [
        EntryPoint("core.Embedder.encode[m3 dense+sparse+colbert]", build, encode_m3, True, "dense", True, bulk=False),
        EntryPoint(
            "core.Embedder.encode[dense]", build,
            lambda o, items: _dense_rows(o["dense"].encode(items, truncate=o["truncate"]).dense), True, "dense",
            True, bulk=True,
        ),
        EntryPoint(
            "core.Embedder.encode_queries[llm_embedder]", build,
            lambda o, items: _dense_rows(o["llm"].encode_queries(items, truncate=o["truncate"]).dense), True,
            "dense", True,
        ),
        EntryPoint(
            "core.Embedder.encode[m3 sparse]", build,
            lambda o, items: [_ints(w) for w in o["m3"].encode(items, dense=False, sparse=True,
                                                                truncate=o["truncate"]).lexical_weights],
            True, "sparse", True, tags=MEMO,
        ),
        EntryPoint(
            "core.Reranker.score[passages]", build,
            lambda o, items: [float(s) for s in o["ce"].score([("query", t) for t in items], truncate=o["truncate"])],
            True, "score", True,
        ),
        EntryPoint(
            "core.Reranker.rerank[query]", build,
            lambda o, items: [h.score for h in o["ce"].rerank(items[0], ["a passage"], truncate=o["truncate"])],
            False, "score", True,
        ),
        EntryPoint(
            "core.Reranker.rerank[documents]", build,
            lambda o, items: [h.score for h in o["ce"].rerank("query", items, truncate=o["truncate"])],
            True, "score", True,
        ),
    ]


def compat_entry_points() -> list[EntryPoint]:
    from bge_core import compat

    def m3(models: Models, **options: Any) -> Any:
        return compat.BGEM3FlagModel(models.m3, devices="cpu", passage_max_length=options.get("max_length") or 512)

    def rerankers(cls: type, path: Callable[[Models], str]) -> Callable[..., Any]:
        return lambda models, **options: cls(path(models), devices="cpu", max_length=options.get("max_length") or 512)

    def scores(r: Any, items: list) -> list[float]:
        out = r.compute_score([("query", t) for t in items])
        return [float(s) for s in (out[-1] if out and isinstance(out[0], list) else out)]

    def m3_encode(model: Any, items: list) -> list:
        out = model.encode(items, return_sparse=True, return_colbert_vecs=True)
        assert len(out["lexical_weights"]) == len(items)
        return _dense_rows(out["dense_vecs"])

    return [
        EntryPoint(
            "compat.FlagModel.encode", lambda models, **o: compat.FlagModel(
                models.dense, devices="cpu", passage_max_length=o.get("max_length") or 512),
            lambda m, items: _dense_rows(m.encode(items)), True, "dense",
        ),
        EntryPoint(
            "compat.FlagLLMModel.encode_queries", lambda models, **o: compat.FlagLLMModel(
                models.llm_embedder, devices="cpu", query_max_length=o.get("max_length") or 512,
                query_instruction_for_retrieval="Given a query, retrieve passages"),
            lambda m, items: _dense_rows(m.encode_queries(items)), True, "dense",
        ),
        EntryPoint(
            "compat.FlagICLModel.encode_queries", lambda models, **o: compat.FlagICLModel(
                models.llm_embedder, devices="cpu", query_max_length=o.get("max_length") or 512,
                query_instruction_for_retrieval="Given a query, retrieve passages",
                examples_for_task=[{"instruct": "Find the animal.", "query": "bamboo", "response": "panda"}]),
            lambda m, items: _dense_rows(m.encode_queries(items)), True, "dense",
        ),
        EntryPoint(
            "compat.FlagAutoModel.from_finetuned(...).encode_corpus", lambda models, **o: compat.FlagAutoModel
            .from_finetuned(models.dense, devices="cpu", passage_max_length=o.get("max_length") or 512),
            lambda m, items: _dense_rows(m.encode_corpus(items)), True, "dense",
        ),
        EntryPoint("compat.BGEM3FlagModel.encode", m3, m3_encode, True, "dense"),
        EntryPoint(
            "compat.BGEM3FlagModel.encode[sparse]", m3,
            lambda m, items: [_sparse_from_compat(w) for w in m.encode(items, return_dense=False,
                                                                       return_sparse=True)["lexical_weights"]],
            True, "sparse",
        ),
        EntryPoint("compat.FlagReranker.compute_score", rerankers(compat.FlagReranker, lambda m: m.cross_encoder),
                   scores, True, "score"),
        EntryPoint("compat.FlagAutoReranker.from_finetuned(...).compute_score", lambda models, **o: compat
                   .FlagAutoReranker.from_finetuned(models.cross_encoder, devices="cpu",
                                                    max_length=o.get("max_length") or 512), scores, True, "score"),
        EntryPoint("compat.FlagLLMReranker.compute_score",
                   rerankers(compat.FlagLLMReranker, lambda m: m.llm_reranker), scores, True, "score"),
        EntryPoint("compat.LayerWiseFlagLLMReranker.compute_score",
                   rerankers(compat.LayerWiseFlagLLMReranker, lambda m: m.layerwise), scores, True, "score"),
        EntryPoint("compat.LightWeightFlagLLMReranker.compute_score",
                   rerankers(compat.LightWeightFlagLLMReranker, lambda m: m.lightweight), scores, True, "score"),
    ]


def langchain_entry_points() -> list[EntryPoint]:
    from langchain_core.documents import Document

    from bge_langchain import BGEEmbeddings, BGEM3SparseEmbeddings, BGEReranker

    def dense(models: Models, **options: Any) -> Any:
        return BGEEmbeddings(model_name=models.m3, device="cpu", **_opts(options, "max_length", "truncate"))

    def dense_small(models: Models, **options: Any) -> Any:
        return BGEEmbeddings(model_name=models.dense, device="cpu", **_opts(options, "max_length", "truncate"))

    def sparse(models: Models, **options: Any) -> Any:
        return BGEM3SparseEmbeddings(model_name=models.m3, device="cpu", **_opts(options, "max_length", "truncate"))

    def reranker(models: Models, **options: Any) -> Any:
        return BGEReranker(model_name=models.cross_encoder, device="cpu", top_n=None,
                           **_opts(options, "max_length", "truncate"))

    def docs(items: list) -> list:
        return [Document(page_content=t) for t in items]

    return [
        EntryPoint("langchain.BGEEmbeddings.embed_documents", dense_small, lambda e, items: e.embed_documents(items),
                   True, "dense", True),
        EntryPoint("langchain.BGEEmbeddings.embed_query", dense, lambda e, items: [e.embed_query(items[0])],
                   False, "dense", True, tags=MEMO),
        EntryPoint("langchain.BGEM3SparseEmbeddings.embed_documents", sparse,
                   lambda e, items: e.embed_documents(items), True, "sparse", True, tags=MEMO),
        EntryPoint("langchain.BGEM3SparseEmbeddings.embed_query", sparse,
                   lambda e, items: [e.embed_query(items[0])], False, "sparse", True, tags=MEMO),
        EntryPoint(
            "langchain.BGEReranker.compress_documents[query]", reranker,
            lambda r, items: [d.metadata["relevance_score"] for d in r.compress_documents(docs(["a passage"]),
                                                                                          items[0])],
            False, "score", True,
        ),
        EntryPoint(
            "langchain.BGEReranker.compress_documents[documents]", reranker,
            lambda r, items: [d.metadata["relevance_score"] for d in r.compress_documents(items, "query")],
            True, "score", True, wrap=docs,
        ),
    ]


def llamaindex_entry_points() -> list[EntryPoint]:
    from llama_index.core.schema import NodeWithScore, TextNode

    from bge_llamaindex import BGEEmbedding, BGEM3SparseEmbeddingFunction, BGEReranker

    def dense(models: Models, **options: Any) -> Any:
        return BGEEmbedding(models.m3, device="cpu", **_opts(options, "max_length", "truncate"))

    def dense_small(models: Models, **options: Any) -> Any:
        return BGEEmbedding(models.dense, device="cpu", **_opts(options, "max_length", "truncate"))

    def sparse(models: Models, **options: Any) -> Any:
        return BGEM3SparseEmbeddingFunction(models.m3, device="cpu", **_opts(options, "max_length", "truncate"))

    def reranker(models: Models, **options: Any) -> Any:
        return BGEReranker(models.cross_encoder, device="cpu", top_n=10_000, **_opts(options, "max_length"))

    def nodes(items: list) -> list:
        return [NodeWithScore(node=TextNode(text=t), score=0.0) for t in items]

    return [
        EntryPoint("llamaindex.BGEEmbedding.get_text_embedding_batch", dense_small,
                   lambda e, items: e.get_text_embedding_batch(items), True, "dense", True),
        EntryPoint("llamaindex.BGEEmbedding.get_query_embedding", dense,
                   lambda e, items: [e.get_query_embedding(items[0])], False, "dense", True, tags=MEMO),
        EntryPoint("llamaindex.BGEM3SparseEmbeddingFunction.encode_documents", sparse,
                   lambda e, items: [_ints(r) for r in e.encode_documents(items)], True, "sparse", True, tags=MEMO),
        EntryPoint("llamaindex.BGEM3SparseEmbeddingFunction.encode_queries", sparse,
                   lambda e, items: [_ints(r) for r in e.encode_queries(items)], True, "sparse", True, tags=MEMO),
        EntryPoint(
            "llamaindex.BGEReranker.postprocess_nodes[query]", reranker,
            lambda r, items: [n.score for n in r.postprocess_nodes(nodes(["a passage"]), query_str=items[0])],
            False, "score",
        ),
        EntryPoint(
            "llamaindex.BGEReranker.postprocess_nodes[nodes]", reranker,
            lambda r, items: [n.score for n in r.postprocess_nodes(items, query_str="query")],
            True, "score", wrap=nodes,
        ),
    ]


def haystack_entry_points() -> list[EntryPoint]:
    from haystack import Document
    from haystack.utils import ComponentDevice

    from bge_haystack import (
        BGEDocumentEmbedder,
        BGERanker,
        BGESparseDocumentEmbedder,
        BGESparseTextEmbedder,
        BGETextEmbedder,
    )

    def component(cls: type, path: Callable[[Models], str], **extra: Any) -> Callable[..., Any]:
        def build(models: Models, **options: Any) -> Any:
            made = cls(model=path(models), device=ComponentDevice.from_str("cpu"), **extra,
                       **_opts(options, "max_length", "truncate"))
            made.warm_up()
            return made

        return build

    def docs(items: list) -> list:
        return [Document(content=t) for t in items]

    def sparse_row(embedding: Any) -> dict[int, float]:
        return {int(i): float(v) for i, v in zip(embedding.indices, embedding.values)}

    quiet = {"progress_bar": False}
    return [
        EntryPoint("haystack.BGETextEmbedder.run", component(BGETextEmbedder, lambda m: m.m3),
                   lambda c, items: [c.run(items[0])["embedding"]], False, "dense", True, tags=MEMO),
        EntryPoint(
            "haystack.BGEDocumentEmbedder.run", component(BGEDocumentEmbedder, lambda m: m.dense, **quiet),
            lambda c, items: [d.embedding for d in c.run(items)["documents"]], True, "dense", True, wrap=docs,
            bulk=True, checks_unicode=True,
        ),
        EntryPoint("haystack.BGESparseTextEmbedder.run", component(BGESparseTextEmbedder, lambda m: m.m3),
                   lambda c, items: [sparse_row(c.run(items[0])["sparse_embedding"])], False, "sparse", True,
                   tags=MEMO),
        EntryPoint(
            "haystack.BGESparseDocumentEmbedder.run", component(BGESparseDocumentEmbedder, lambda m: m.m3, **quiet),
            lambda c, items: [sparse_row(d.sparse_embedding) for d in c.run(items)["documents"]], True, "sparse",
            True, wrap=docs, checks_unicode=True, tags=MEMO,
        ),
        EntryPoint(
            "haystack.BGERanker.run[query]", component(BGERanker, lambda m: m.cross_encoder, top_k=10_000),
            lambda c, items: [d.score for d in c.run(query=items[0], documents=docs(["a passage"]))["documents"]],
            False, "score", True,
        ),
        EntryPoint(
            "haystack.BGERanker.run[documents]", component(BGERanker, lambda m: m.cross_encoder, top_k=10_000),
            lambda c, items: [d.score for d in c.run(query="query", documents=items)["documents"]],
            True, "score", True, wrap=docs, checks_unicode=True,
        ),
    ]


def milvus_entry_points() -> list[EntryPoint]:
    from bge_milvus import BGEM3EmbeddingFunction, BGERerankFunction, HybridCollection

    def ef(models: Models, **options: Any) -> Any:
        return BGEM3EmbeddingFunction(models.m3, device="cpu", passage_max_length=options.get("max_length"))

    def rf(models: Models, **options: Any) -> Any:
        # A user who shortens max_length shortens the query budget too (pymilvus-model's default is 256 tokens;
        # a query budget of max_length or more is the core defect test_bad_input_matrix names).
        mx = options.get("max_length") or 512
        return BGERerankFunction(models.cross_encoder, device="cpu", max_length=mx, query_max_length=min(256, mx // 2))

    def collection(models: Models, **options: Any) -> Any:
        import os

        name = f"matrix_{options.get('max_length') or 0}"
        made = HybridCollection(name, models.m3, uri=os.path.join(models.milvus_dir, "matrix.db"), device="cpu",
                                max_length=options.get("max_length"))
        return made

    def ef_call(method: str) -> Callable[[Any, list], list]:
        def call(f: Any, items: list) -> list:
            out = getattr(f, method)(items) if method else f(items)
            assert len(_csr_rows(out["sparse"])) == len(items)
            return _dense_rows(np.stack(out["dense"])) if len(items) else []

        return call

    return [
        EntryPoint("milvus.BGEM3EmbeddingFunction.__call__", ef, ef_call(""), True, "dense"),
        EntryPoint("milvus.BGEM3EmbeddingFunction.encode_queries", ef, ef_call("encode_queries"), True, "dense"),
        EntryPoint("milvus.BGERerankFunction.__call__[documents]", rf,
                   lambda f, items: [r.score for r in f("query", items, top_k=0)], True, "score"),
        EntryPoint("milvus.BGERerankFunction.__call__[query]", rf,
                   lambda f, items: [r.score for r in f(items[0], ["a passage"])], False, "score"),
        EntryPoint("milvus.HybridCollection.add", collection, lambda c, items: c.add(items), True, "id",
                   checks_unicode=True, tags=frozenset({"milvus_lite"})),
        EntryPoint("milvus.HybridCollection.search[query]", collection,
                   lambda c, items: [h.score for h in c.search(items[0], k=1, mode="hybrid")] or [0.0], False,
                   "score", tags=frozenset({"milvus_lite"})),
    ]


def all_entry_points() -> list[EntryPoint]:
    return [
        *core_entry_points(), *compat_entry_points(), *langchain_entry_points(), *llamaindex_entry_points(),
        *haystack_entry_points(), *milvus_entry_points(),
    ]


ENTRY_POINTS = all_entry_points()


def feed(entry: EntryPoint, obj: Any, items: list[Any]) -> list[Any]:
    """Call `entry` with `items` (wrapped in the framework's documents first where it takes those)."""
    if entry.wrap is not None:
        items = entry.wrap(items)
    return entry.call(obj, items)
