"""BGE-M3 relevance scores: dense, lexical matching, ColBERT MaxSim, and their weighted mix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

SCORE_KEYS = ("colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense")


def lexical_matching_score(query: Mapping[int, float], passage: Mapping[int, float]) -> float:
    """Sum of weight products over the tokens both texts contain.

    Example:
        >>> lexical_matching_score({1: 0.5, 2: 1.0}, {2: 0.5, 3: 1.0})
        0.5
    """
    if len(passage) < len(query):
        query, passage = passage, query
    return float(sum(w * passage[t] for t, w in query.items() if t in passage))


def colbert_score(query: np.ndarray, passage: np.ndarray, floor: float | None = None) -> float:
    """Mean over query vectors of the best inner product with any passage vector (MaxSim).

    `floor` lower-bounds each best match (FlagEmbedding's padded batches compare against zero
    vectors of padding, which acts as a floor of 0 for passages shorter than their batch).

    Example:
        >>> colbert_score(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32))
        1.0
    """
    if len(query) == 0:
        return 0.0
    if len(passage) == 0:
        best = np.zeros(len(query), dtype=np.float32)
    else:
        best = (query.astype(np.float32) @ passage.astype(np.float32).T).max(axis=1)
    if floor is not None:
        best = np.maximum(best, floor)
    return float(best.sum() / len(query))


def combine_scores(dense: float, sparse: float, colbert: float, weights: Sequence[float] | None) -> dict[str, float]:
    """The five scores FlagEmbedding reports; `weights` = [dense, sparse, colbert], default [1, 1, 1].

    Example:
        >>> combine_scores(0.5, 0.2, 0.8, [0.4, 0.2, 0.4])["colbert+sparse+dense"]
        0.6
    """
    w0, w1, w2 = weights if weights is not None else (1.0, 1.0, 1.0)
    return {
        "colbert": colbert,
        "sparse": sparse,
        "dense": dense,
        "sparse+dense": (w1 * sparse + w0 * dense) / (w1 + w0),
        "colbert+sparse+dense": (w2 * colbert + w1 * sparse + w0 * dense) / (w0 + w1 + w2),
    }
