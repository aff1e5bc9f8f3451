"""bge_core: BAAI's BGE embedders and rerankers on one engine, with FlagEmbedding's numbers.

Layer: the library, at the bottom. It imports no other package of this project, and no framework,
Milvus, HTTP stack, Ray, click or file-format library (`tests/layers`); everything else is built on it.

Example:
    >>> from bge_core import Embedder, Reranker
    >>> m3 = Embedder("BAAI/bge-m3")
    >>> out = m3.encode(["hello"], dense=True, sparse=True, colbert=True)
    >>> Reranker("BAAI/bge-reranker-v2-m3").rerank("hello", ["hi", "bye"], top_k=1)
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bge_core.embedder import Embedder
    from bge_core.errors import BgeCoreError, ModelLoadError
    from bge_core.loading import clear_cache, load_model
    from bge_core.registry import KNOWN_MODELS, LLM_EMBEDDER_INSTRUCTIONS, ModelSpec
    from bge_core.reranker import Reranker
    from bge_core.scoring import colbert_score, combine_scores, lexical_matching_score
    from bge_core.types import Embeddings, RerankHit, Token

# Imported on first use: `import bge_core.errors` (what a command line needs to parse its options and
# report a bad one) then costs no torch or transformers import, several seconds on some hosts.
_HOMES = {
    "Embedder": "embedder", "BgeCoreError": "errors", "ModelLoadError": "errors", "clear_cache": "loading",
    "load_model": "loading", "KNOWN_MODELS": "registry", "LLM_EMBEDDER_INSTRUCTIONS": "registry",
    "ModelSpec": "registry", "Reranker": "reranker", "colbert_score": "scoring", "combine_scores": "scoring",
    "lexical_matching_score": "scoring", "Embeddings": "types", "RerankHit": "types", "Token": "types",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'bge_core' has no attribute {name!r}")
    from bge_core import embedder, errors, loading, registry, reranker, scoring, types  # noqa: F401

    value = getattr(sys.modules[f"{__name__}.{home}"], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = [
    "KNOWN_MODELS",
    "LLM_EMBEDDER_INSTRUCTIONS",
    "BgeCoreError",
    "Embedder",
    "Embeddings",
    "ModelLoadError",
    "ModelSpec",
    "RerankHit",
    "Token",
    "Reranker",
    "clear_cache",
    "colbert_score",
    "combine_scores",
    "lexical_matching_score",
    "load_model",
]
