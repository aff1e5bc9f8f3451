"""`BGEM3SparseEmbeddingFunction` alone and inside a hybrid `MilvusVectorStore` on Milvus Lite."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import VectorStoreQueryMode
from llama_index.vector_stores.milvus.utils import BaseSparseEmbeddingFunction

from bge_core import Embedder
from bge_core.sparse import EMPTY_PLACEHOLDER_WEIGHT
from bge_llamaindex import BGEM3SparseEmbeddingFunction

# Texts with (almost) no shared words, so each is its own best sparse and dense match.
CORPUS = [
    "The giant panda is a bear native to south central China.",
    "Milvus is a vector database built for similarity search.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "The quick brown fox jumps over the lazy dog.",
    "El aprendizaje automático transforma la búsqueda de información.",
    "大熊猫是中国特有的熊科动物，主要以竹子为食。",
    "Москва — столица России, а Киев — столица Украины.",
    "Numbers like 3.14159 and 2026-11-25 appear in documents.",
]


def counters(fn: BGEM3SparseEmbeddingFunction) -> tuple[int, int]:
    engine = fn.embedder.loaded.engine
    return engine.forward_calls, engine.rows_forwarded


class TestEncode:
    def test_is_the_stores_sparse_interface(self, m3_sparse):
        assert isinstance(m3_sparse, BaseSparseEmbeddingFunction)

    def test_documents_and_queries_equal_core_lexical_weights(self, m3_path, m3_sparse):
        core = Embedder(m3_path, device="cpu", reuse_outputs=False)
        want = core.encode(CORPUS, dense=False, sparse=True).lexical_weights
        for got in (m3_sparse.encode_documents(CORPUS), m3_sparse.encode_queries(CORPUS)):
            assert len(got) == len(CORPUS)
            for row, ref in zip(got, want):
                assert set(row) == set(ref)
                assert all(abs(row[k] - ref[k]) < 1e-5 for k in ref)

    def test_weights_are_positive_python_numbers(self, m3_sparse):
        for row in m3_sparse.encode_documents(CORPUS + [""]):
            assert row and all(type(k) is int and type(v) is float and v > 0 for k, v in row.items())

    def test_empty_text_is_the_documented_placeholder_never_an_empty_row(self, m3_sparse):
        pad = m3_sparse.embedder.pad_token_id
        assert m3_sparse.encode_documents([""]) == [{pad: EMPTY_PLACEHOLDER_WEIGHT}]
        assert m3_sparse.encode_queries(["", "a text"])[0] == {pad: EMPTY_PLACEHOLDER_WEIGHT}

    def test_many_texts_are_one_batched_engine_call(self, m3_path):
        fn = BGEM3SparseEmbeddingFunction(m3_path, device="cpu")
        texts = [f"batched sparse text number {i}" for i in range(60)]
        calls, rows = counters(fn)
        assert len(fn.encode_documents(texts)) == 60
        assert counters(fn) == (calls + 1, rows + 60)

    async def test_async_versions_match_sync(self, m3_sparse):
        docs, queries = await asyncio.gather(
            m3_sparse.async_encode_documents(CORPUS), m3_sparse.async_encode_queries(CORPUS[:2])
        )
        assert docs == m3_sparse.encode_documents(CORPUS)
        assert queries == m3_sparse.encode_queries(CORPUS[:2])

    def test_shares_the_loaded_model_by_name_or_object(self, m3_path, m3_embedding):
        by_name = BGEM3SparseEmbeddingFunction(m3_path, device="cpu")
        by_object = BGEM3SparseEmbeddingFunction(m3_embedding.embedder)
        assert by_name.embedder.loaded is m3_embedding.embedder.loaded
        assert by_object.embedder is m3_embedding.embedder
        assert by_object.model_name == m3_path

    def test_rejects_a_model_without_sparse_head(self, dense_path):
        with pytest.raises(ValueError, match="BGE-M3"):
            BGEM3SparseEmbeddingFunction(dense_path, device="cpu")

    def test_bad_input_is_a_type_error_naming_the_index(self, m3_sparse):
        with pytest.raises(TypeError, match="2"):
            m3_sparse.encode_documents(["a", "b", 3])


class TestDenseAndSparseShareOneForward:
    def test_sparse_after_dense_costs_no_forward(self, m3_embedding, m3_sparse):
        texts = [f"shared forward text {i}" for i in range(12)]
        calls, rows = counters(m3_sparse)
        m3_embedding.get_text_embedding_batch(texts)
        m3_sparse.encode_documents(texts)
        for text in texts:  # the store's way: one node per call
            m3_sparse.encode_documents([text])
        assert counters(m3_sparse)[1] - rows == len(texts)

    def test_query_dense_then_sparse_is_one_forward(self, m3_embedding, m3_sparse):
        calls, rows = counters(m3_sparse)
        m3_embedding.get_query_embedding("a query never seen before")
        m3_sparse.encode_queries(["a query never seen before"])
        assert counters(m3_sparse)[1] - rows == 1


class TestHybridMilvusVectorStore:
    def test_index_answers_with_the_right_node_in_hybrid_mode(self, m3_embedding, m3_sparse, milvus_store):
        store = milvus_store(m3_sparse, dim=m3_embedding.embedder.dim)
        docs = [Document(text=t, id_=f"doc-{i}") for i, t in enumerate(CORPUS)]
        m3_sparse.embedder.loaded.memo.clear()  # earlier tests embedded these texts
        _, rows = counters(m3_sparse)
        index = VectorStoreIndex.from_documents(
            docs, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=m3_embedding
        )
        # Dense for the index and sparse for the store (one node per call): one forward per node.
        assert counters(m3_sparse)[1] - rows == len(CORPUS)
        assert store.client.query(store.collection_name, filter="", output_fields=["count(*)"])[0]["count(*)"] == 8

        retriever = index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=3)
        for i in (0, 2, 5, 7):
            hits = retriever.retrieve(CORPUS[i])
            assert hits[0].node.ref_doc_id == f"doc-{i}"
            assert hits[0].node.get_content() == CORPUS[i]
            # RRF with k=60 over the dense and the sparse list, first in both: 2 / 61.
            assert hits[0].score == pytest.approx(2 / 61, rel=1e-3)

    def test_query_engine_hybrid_mode_uses_the_sparse_function(self, m3_embedding, m3_path, milvus_store, mock_llm):
        sparse = RecordingSparseFunction(m3_path, device="cpu")
        store = milvus_store(sparse, dim=m3_embedding.embedder.dim)
        nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(CORPUS)]
        index = VectorStoreIndex(
            nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=m3_embedding
        )
        assert sparse.documents == [[t] for t in CORPUS]  # the store's one-node-per-call inserts
        engine = index.as_query_engine(
            vector_store_query_mode=VectorStoreQueryMode.HYBRID, similarity_top_k=2, response_mode="no_text",
            llm=mock_llm,
        )
        query = CORPUS[1]  # the tiny model is random: only the node's own text is surely its best match
        sparse.embedder.loaded.memo.clear()  # so the query is not already known from indexing
        _, rows = counters(sparse)
        response = engine.query(query)
        assert sparse.queries == [[query]]
        assert response.source_nodes[0].node.node_id == "n1"
        assert response.source_nodes[0].score == pytest.approx(2 / 61, rel=1e-3)  # an RRF score: hybrid ran
        # One forward for the new query: the dense half computed the sparse half too.
        assert counters(sparse)[1] - rows == 1


class RecordingSparseFunction(BGEM3SparseEmbeddingFunction):
    """The real function, remembering what the store asked it for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.documents: list[list[str]] = []
        self.queries: list[list[str]] = []

    def encode_documents(self, documents):
        self.documents.append(list(documents))
        return super().encode_documents(documents)

    def encode_queries(self, queries):
        self.queries.append(list(queries))
        return super().encode_queries(queries)
