"""Our components inside real Haystack pipelines: YAML round trip, Milvus Lite hybrid, in-memory dense."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever
from haystack.components.writers import DocumentWriter
from haystack.core.pipeline import Pipeline
from haystack.dataclasses import Document
from haystack.document_stores.in_memory import InMemoryDocumentStore

from bge_haystack import (
    BGEDocumentEmbedder,
    BGERanker,
    BGESparseDocumentEmbedder,
    BGESparseTextEmbedder,
    BGETextEmbedder,
)

TEXTS = [
    "The giant panda is a bear native to China.",
    "Milvus is a vector database built for similarity search.",
    "BGE-M3 gives dense, sparse and multi-vector embeddings.",
    "Paris is the capital of France.",
    "Haystack builds retrieval pipelines from components.",
    "",  # stored with the sparse placeholder: Milvus must accept it
]
QUERY = TEXTS[2]  # "right" with random tiny weights: the document whose text is the query


def documents() -> list[Document]:
    return [Document(content=t, meta={"n": i}) for i, t in enumerate(TEXTS)]


def indexing_pipeline(model: str, store, cpu, sparse: bool = True) -> Pipeline:
    pipe = Pipeline()
    pipe.add_component("dense", BGEDocumentEmbedder(model, device=cpu, progress_bar=False))
    if sparse:
        pipe.add_component("sparse", BGESparseDocumentEmbedder(model, device=cpu, progress_bar=False))
    pipe.add_component("writer", DocumentWriter(store))
    if sparse:
        pipe.connect("dense.documents", "sparse.documents")
        pipe.connect("sparse.documents", "writer.documents")
    else:
        pipe.connect("dense.documents", "writer.documents")
    return pipe


def assert_ranked_like_core(ranked: list[Document], retrieved: list[Document], reranker_path: str) -> None:
    from bge_core import Reranker

    scores = Reranker(reranker_path, device="cpu").score([(QUERY, d.content) for d in retrieved], normalize=True)
    expected = sorted(zip(scores.tolist(), [d.id for d in retrieved]), key=lambda p: -p[0])
    assert [d.id for d in ranked] == [doc_id for _, doc_id in expected[: len(ranked)]]
    assert [d.score for d in ranked] == pytest.approx([s for s, _ in expected[: len(ranked)]], abs=1e-6)


def comparable(pipeline_dict: dict) -> dict:
    """A pipeline dict as JSON would carry it, with connections in a fixed order (Haystack may reorder them)."""
    data = json.loads(json.dumps(pipeline_dict))
    data["connections"] = sorted(data["connections"], key=lambda c: (c["sender"], c["receiver"]))
    return data


# --- the whole pipeline as YAML, loaded in a fresh process with Haystack's defaults --------------------------


def test_pipeline_yaml_loads_in_a_fresh_process_with_the_default_allowlist(m3_path, cross_encoder_path, cpu):
    index_name = "bge-yaml-roundtrip"
    index = indexing_pipeline(m3_path, InMemoryDocumentStore(index=index_name), cpu)
    query = Pipeline()
    query.add_component("text", BGETextEmbedder(m3_path, device=cpu))
    query.add_component("sparse_text", BGESparseTextEmbedder(m3_path, device=cpu))
    query.add_component("retriever", InMemoryEmbeddingRetriever(InMemoryDocumentStore(index=index_name), top_k=3))
    query.add_component("ranker", BGERanker(cross_encoder_path, device=cpu, top_k=2))
    query.connect("text.embedding", "retriever.query_embedding")
    query.connect("retriever.documents", "ranker.documents")
    dumped = {"index": index.dumps(), "query": query.dumps()}
    assert "haystack_integrations.components.embedders.bge.bge_text_embedder.BGETextEmbedder" in dumped["query"]
    assert "haystack_integrations.components.rankers.bge.bge_ranker.BGERanker" in dumped["query"]

    script = textwrap.dedent(
        """
        import json, sys
        from haystack import Document, Pipeline
        from haystack.core.errors import DeserializationError
        dumped = json.loads(sys.stdin.read())
        index, query = Pipeline.loads(dumped["index"]), Pipeline.loads(dumped["query"])
        texts = dumped["texts"]
        index.run({"dense": {"documents": [Document(content=t) for t in texts]}})
        out = query.run({"text": {"text": dumped["query_text"]}, "sparse_text": {"text": dumped["query_text"]},
                         "ranker": {"query": dumped["query_text"]}}, include_outputs_from={"retriever"})
        # The allowlist is really on: a class from outside it is refused.
        refused = dumped["index"].replace(
            "haystack_integrations.components.embedders.bge.bge_document_embedder.BGEDocumentEmbedder",
            "bge_core.embedder.Embedder")
        try:
            Pipeline.loads(refused)
            refused_error = None
        except DeserializationError as error:
            refused_error = str(error)
        print(json.dumps({
            "index": index.to_dict(), "query": query.to_dict(),
            "retrieved": [d.content for d in out["retriever"]["documents"]],
            "ranked": [d.content for d in out["ranker"]["documents"]],
            "sparse_indices": out["sparse_text"]["sparse_embedding"].indices,
            "refused_error": refused_error,
        }))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAYSTACK_")}  # Haystack's defaults only
    payload = json.dumps({**dumped, "texts": TEXTS, "query_text": QUERY})
    proc = subprocess.run(
        [sys.executable, "-c", script], input=payload, capture_output=True, text=True, env=env, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert comparable(result["index"]) == comparable(index.to_dict())
    assert comparable(result["query"]) == comparable(query.to_dict())
    assert result["retrieved"][0] == QUERY
    assert len(result["ranked"]) == 2 and set(result["ranked"]) <= set(result["retrieved"])
    assert result["sparse_indices"] and result["sparse_indices"] == sorted(result["sparse_indices"])
    assert result["refused_error"] is not None and "allowlist" in result["refused_error"]


def test_components_round_trip_through_pipeline_to_dict(m3_path, cross_encoder_path, cpu):
    pipe = Pipeline()
    for name, comp in {
        "text": BGETextEmbedder(m3_path, device=cpu, prefix=""),
        "docs": BGEDocumentEmbedder(m3_path, device=cpu, meta_fields_to_embed=["title"]),
        "sparse_text": BGESparseTextEmbedder(m3_path, device=cpu),
        "sparse_docs": BGESparseDocumentEmbedder(m3_path, device=cpu, embedding_separator=" "),
        "ranker": BGERanker(cross_encoder_path, device=cpu, top_k=4, scale_score=False),
    }.items():
        pipe.add_component(name, comp)
    loaded = Pipeline.loads(pipe.dumps())
    assert comparable(loaded.to_dict()) == comparable(pipe.to_dict())
    assert type(loaded.get_component("ranker")) is BGERanker


# --- Milvus Lite: dense + sparse indexing, hybrid retrieval, reranking -----------------------------------------


@pytest.fixture
def milvus_store(tmp_path):
    from milvus_haystack import MilvusDocumentStore
    from milvus_lite.server_manager import server_manager_instance

    uri = str(tmp_path / "hs.db")
    store = MilvusDocumentStore(
        collection_name="bge_haystack",
        connection_args={"uri": uri},
        consistency_level="Strong",
        # BGE vectors are compared by inner product; milvus-haystack defaults to L2. No drop ratio:
        # milvus-lite 3 rejects one.
        index_params={"index_type": "FLAT", "metric_type": "IP", "params": {}},
        search_params={"metric_type": "IP", "params": {}},
        drop_old=True,
        sparse_vector_field="sparse",
        sparse_index_params={"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "IP"},
        sparse_search_params={"metric_type": "IP"},
    )
    yield store
    store.client.close()
    server_manager_instance.release_server(uri)


def test_milvus_hybrid_indexing_and_query_pipelines(m3_path, cross_encoder_path, cpu, milvus_store):
    from milvus_haystack.milvus_embedding_retriever import MilvusHybridRetriever

    index = indexing_pipeline(m3_path, milvus_store, cpu)
    index.warm_up()
    engine = index.get_component("dense")._embedder.loaded.engine
    before = engine.rows_forwarded
    written = index.run({"dense": {"documents": documents()}})
    assert written["writer"]["documents_written"] == len(TEXTS)
    assert milvus_store.count_documents() == len(TEXTS)
    # dense and sparse of one insert came from one forward per new text (the empty one included)
    assert engine.rows_forwarded - before <= len(TEXTS)

    query = Pipeline()
    query.add_component("text", BGETextEmbedder(m3_path, device=cpu))
    query.add_component("sparse_text", BGESparseTextEmbedder(m3_path, device=cpu))
    query.add_component("retriever", MilvusHybridRetriever(document_store=milvus_store, top_k=4))
    query.add_component("ranker", BGERanker(cross_encoder_path, device=cpu, top_k=3))
    query.connect("text.embedding", "retriever.query_embedding")
    query.connect("sparse_text.sparse_embedding", "retriever.query_sparse_embedding")
    query.connect("retriever.documents", "ranker.documents")
    out = query.run(
        {"text": {"text": QUERY}, "sparse_text": {"text": QUERY}, "ranker": {"query": QUERY}},
        include_outputs_from={"retriever"},
    )
    retrieved, ranked = out["retriever"]["documents"], out["ranker"]["documents"]
    assert retrieved[0].content == QUERY and retrieved[0].meta["n"] == 2
    assert len(ranked) == 3
    assert_ranked_like_core(ranked, retrieved, cross_encoder_path)

    # An empty query becomes the sparse placeholder, which Milvus accepts (an empty vector it rejects).
    empty = query.run({"text": {"text": ""}, "sparse_text": {"text": ""}, "ranker": {"query": ""}})
    assert len(empty["ranker"]["documents"]) == 3


# --- In-memory store, dense path --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["dense_path", "m3_path"])
def test_in_memory_dense_indexing_and_query_pipelines(model, request, cross_encoder_path, cpu):
    path = request.getfixturevalue(model)
    store = InMemoryDocumentStore(embedding_similarity_function="dot_product")
    written = indexing_pipeline(path, store, cpu, sparse=False).run({"dense": {"documents": documents()}})
    assert written["writer"]["documents_written"] == len(TEXTS)

    query = Pipeline()
    # prefix="" : a document equal to the query then embeds to the same vector whatever the model
    query.add_component("text", BGETextEmbedder(path, device=cpu, prefix=""))
    query.add_component("retriever", InMemoryEmbeddingRetriever(store, top_k=4))
    query.add_component("ranker", BGERanker(cross_encoder_path, device=cpu, top_k=2))
    query.connect("text.embedding", "retriever.query_embedding")
    query.connect("retriever.documents", "ranker.documents")
    out = query.run({"text": {"text": QUERY}, "ranker": {"query": QUERY}}, include_outputs_from={"retriever"})
    retrieved, ranked = out["retriever"]["documents"], out["ranker"]["documents"]
    assert retrieved[0].content == QUERY
    assert retrieved[0].score == pytest.approx(1.0, abs=1e-4)  # normalised vectors, same text
    assert_ranked_like_core(ranked, retrieved, cross_encoder_path)


async def test_async_pipeline_run(m3_path, cross_encoder_path, cpu):
    store = InMemoryDocumentStore()
    indexing_pipeline(m3_path, store, cpu, sparse=False).run({"dense": {"documents": documents()}})
    query = Pipeline()
    query.add_component("text", BGETextEmbedder(m3_path, device=cpu))
    query.add_component("retriever", InMemoryEmbeddingRetriever(store, top_k=3))
    query.add_component("ranker", BGERanker(cross_encoder_path, device=cpu, top_k=3))
    query.connect("text.embedding", "retriever.query_embedding")
    query.connect("retriever.documents", "ranker.documents")
    out = await query.run_async({"text": {"text": QUERY}, "ranker": {"query": QUERY}})
    assert QUERY in [d.content for d in out["ranker"]["documents"]]


# --- packaging: namespace package next to other integrations ---------------------------------------------------


def test_namespace_package_and_reexports():
    import bge_haystack
    import haystack_integrations
    from haystack_integrations.components.embedders import bge as embedders
    from haystack_integrations.components.rankers import bge as rankers

    assert not hasattr(haystack_integrations, "__file__") or haystack_integrations.__file__ is None  # namespace
    assert set(bge_haystack.__all__) == set(embedders.__all__) | set(rankers.__all__)
    for name in bge_haystack.__all__:
        assert getattr(bge_haystack, name).__module__.startswith("haystack_integrations.components.")
