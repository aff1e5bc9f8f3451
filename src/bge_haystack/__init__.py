"""bge_haystack: BGE embedders (dense and BGE-M3 sparse) and rerankers as Haystack components.

The components live under `haystack_integrations.components.{embedders,rankers}.bge`, the
namespace Haystack trusts when it loads a pipeline file, so saved pipelines load with Haystack's
default deserialization allowlist. They are re-exported here.

Example:
    >>> from bge_haystack import BGEDocumentEmbedder, BGERanker, BGESparseDocumentEmbedder, BGETextEmbedder
    >>> embedder = BGEDocumentEmbedder(model="BAAI/bge-m3")
"""

from __future__ import annotations

from haystack_integrations.components.embedders.bge import (
    BGEDocumentEmbedder,
    BGEImageDocumentEmbedder,
    BGESparseDocumentEmbedder,
    BGESparseTextEmbedder,
    BGETextEmbedder,
)
from haystack_integrations.components.rankers.bge import BGERanker

__all__ = [
    "BGEDocumentEmbedder",
    "BGEImageDocumentEmbedder",
    "BGERanker",
    "BGESparseDocumentEmbedder",
    "BGESparseTextEmbedder",
    "BGETextEmbedder",
]
