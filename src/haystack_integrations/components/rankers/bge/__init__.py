"""BGE rerankers as a Haystack component.

Example:
    >>> from haystack_integrations.components.rankers.bge import BGERanker
    >>> ranker = BGERanker(model="BAAI/bge-reranker-v2-m3", top_k=3)
"""

from __future__ import annotations

from haystack_integrations.components.rankers.bge.bge_ranker import BGERanker

__all__ = ["BGERanker"]
