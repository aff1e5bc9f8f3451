"""bge_langchain: BGE embeddings, BGE-M3 sparse embeddings and BGE rerankers as LangChain parts.

All three run on the shared `bge_core` engine: objects naming the same checkpoint share one copy of
the weights, and a Milvus hybrid insert through `BGEEmbeddings` + `BGEM3SparseEmbeddings` runs
BGE-M3 once per text.

Example:
    >>> from bge_langchain import BGEEmbeddings, BGEM3SparseEmbeddings, BGEReranker
    >>> dense = BGEEmbeddings(model_name="BAAI/bge-m3")
    >>> sparse = BGEM3SparseEmbeddings(model_name="BAAI/bge-m3")
    >>> reranker = BGEReranker(model_name="BAAI/bge-reranker-v2-m3", top_n=3)
"""

from __future__ import annotations

from typing import Any

from bge_langchain.embeddings import BGEEmbeddings
from bge_langchain.rerank import BGEReranker

__all__ = ["BGEEmbeddings", "BGEM3SparseEmbeddings", "BGEReranker"]


def __getattr__(name: str) -> Any:
    # The sparse class needs langchain-milvus; importing it lazily keeps the dense embeddings and
    # the reranker usable with langchain-core alone.
    if name == "BGEM3SparseEmbeddings":
        from bge_langchain.sparse import BGEM3SparseEmbeddings

        return BGEM3SparseEmbeddings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
