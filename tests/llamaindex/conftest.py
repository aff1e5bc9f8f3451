"""Fixtures of the LlamaIndex adapter tests: shared tiny models and Milvus Lite stores that get closed."""

from __future__ import annotations

import pytest

from bge_llamaindex import BGEEmbedding, BGEM3SparseEmbeddingFunction


@pytest.fixture(scope="module")
def m3_embedding(m3_path) -> BGEEmbedding:
    return BGEEmbedding(m3_path, device="cpu")


@pytest.fixture(scope="module")
def m3_sparse(m3_embedding) -> BGEM3SparseEmbeddingFunction:
    return BGEM3SparseEmbeddingFunction(m3_embedding.embedder)


@pytest.fixture
def milvus_store(tmp_path):
    """A factory of hybrid `MilvusVectorStore`s on Milvus Lite; every client is closed afterwards."""
    from llama_index.vector_stores.milvus import MilvusVectorStore

    stores = []

    def make(sparse_function, dim: int):
        store = MilvusVectorStore(
            uri=str(tmp_path / f"li{len(stores)}.db"), dim=dim, overwrite=True, enable_sparse=True,
            sparse_embedding_function=sparse_function, hybrid_ranker="RRFRanker", hybrid_ranker_params={"k": 60},
            use_async_client=False, similarity_metric="IP", consistency_level="Strong",
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.client.close()


@pytest.fixture
def mock_llm():
    """A MockLLM as `Settings.llm` (restored afterwards).

    `response_mode="no_text"` needs no LLM, but its synthesizer still reads `Settings.llm`, whose
    default is OpenAI; no test may reach for it.
    """
    from llama_index.core import Settings
    from llama_index.core.llms import MockLLM

    previous = Settings._llm
    Settings.llm = MockLLM()
    yield Settings.llm
    Settings._llm = previous
