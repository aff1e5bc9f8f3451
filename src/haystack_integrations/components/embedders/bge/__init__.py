"""BGE embedders (dense BGE, BGE-M3 dense and sparse, LLM embedders) as Haystack components.

Example:
    >>> from haystack_integrations.components.embedders.bge import BGEDocumentEmbedder, BGETextEmbedder
    >>> BGETextEmbedder(model="BAAI/bge-m3").run("What is BGE-M3?")["embedding"][:3]
"""

from __future__ import annotations

from haystack_integrations.components.embedders.bge.bge_document_embedder import BGEDocumentEmbedder
from haystack_integrations.components.embedders.bge.bge_image_document_embedder import BGEImageDocumentEmbedder
from haystack_integrations.components.embedders.bge.bge_sparse_document_embedder import BGESparseDocumentEmbedder
from haystack_integrations.components.embedders.bge.bge_sparse_text_embedder import BGESparseTextEmbedder
from haystack_integrations.components.embedders.bge.bge_text_embedder import BGETextEmbedder

__all__ = [
    "BGEDocumentEmbedder", "BGEImageDocumentEmbedder", "BGESparseDocumentEmbedder", "BGESparseTextEmbedder",
    "BGETextEmbedder",
]
