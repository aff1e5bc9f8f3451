"""bge_milvus: BGE-M3 hybrid (dense + sparse) search on Milvus Lite or any Milvus, on the bge_core engine.

Layer: adapter. It imports `bge_core` (and pymilvus), no application; `bge_cli`, `bge_ray` and
`bge_eval` build on it.

- `BGEM3EmbeddingFunction` and `BGERerankFunction`: pymilvus-model's classes of those names (same
  keywords, methods and return types), without FlagEmbedding or run-time pip installs.
- `HybridCollection`: create or reopen a dense + sparse collection, `add` texts idempotently,
  `search` in dense, sparse or hybrid mode (`RRF` or `Weighted` fusion), with an optional ColBERT or
  cross-encoder rerank stage. Milvus Lite (``uri="./bge.db"``) by default; any Milvus by ``uri`` and ``token``.

Example:
    >>> from bge_milvus import HybridCollection, RRF
    >>> with HybridCollection("docs", "BAAI/bge-m3", uri="./bge.db") as docs:
    ...     docs.add(["Alan Turing was the first person to conduct substantial research in AI."])
    ...     hits = docs.search("Who started AI research?", k=1, ranker=RRF(60))
"""

from __future__ import annotations

from bge_milvus.backend import RRF, Hit, Weighted
from bge_milvus.collection import HybridCollection
from bge_milvus.embedding_function import BGEM3EmbeddingFunction
from bge_milvus.inputs import content_id
from bge_milvus.rerank_function import BGERerankFunction, RerankResult

__all__ = [
    "RRF",
    "BGEM3EmbeddingFunction",
    "BGERerankFunction",
    "Hit",
    "HybridCollection",
    "RerankResult",
    "Weighted",
    "content_id",
]
