"""bge_llamaindex: BGE embeddings, BGE-M3 sparse vectors for Milvus, and BGE rerankers in LlamaIndex.

Example:
    >>> from bge_llamaindex import BGEEmbedding, BGEM3SparseEmbeddingFunction, BGEReranker
    >>> embed_model = BGEEmbedding("BAAI/bge-m3")
    >>> sparse_fn = BGEM3SparseEmbeddingFunction(embed_model.embedder)  # same weights, same forward
    >>> reranker = BGEReranker("BAAI/bge-reranker-v2-m3", top_n=3)
"""

from __future__ import annotations

from bge_llamaindex.embedding import BGEEmbedding
from bge_llamaindex.milvus_sparse import BGEM3SparseEmbeddingFunction
from bge_llamaindex.multimodal import BGEVisualizedEmbedding
from bge_llamaindex.rerank import BGEReranker

__all__ = ["BGEEmbedding", "BGEM3SparseEmbeddingFunction", "BGEReranker", "BGEVisualizedEmbedding"]
