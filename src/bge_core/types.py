"""Result types of the native API."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Embeddings:
    """What one `Embedder.encode` call returns; parts not asked for are None.

    Attributes:
        dense: float32 array of shape (n, dim).
        lexical_weights: per text ``{token_id: weight}``, weights > 0, special tokens dropped.
        colbert_vectors: per text an array (tokens after CLS, dim), rows L2-normalised; float32, or
            float16 when the model runs in half precision on a GPU (as FlagEmbedding returns them).
    """

    dense: np.ndarray | None = None
    lexical_weights: list[dict[int, float]] | None = None
    colbert_vectors: list[np.ndarray] | None = None

    def __len__(self) -> int:
        for part in (self.dense, self.lexical_weights, self.colbert_vectors):
            if part is not None:
                return len(part)
        return 0


@dataclass(frozen=True)
class RerankHit:
    """One reranked document: its index in the input list and its score."""

    index: int
    score: float


@dataclass(frozen=True)
class Token:
    """One token of `ModelHandle.tokenize`: its id, its text, whether it is a special token, and the
    character span ``text[start:stop]`` it came from (``start == stop`` for special tokens)."""

    id: int
    text: str
    special: bool
    start: int
    stop: int
