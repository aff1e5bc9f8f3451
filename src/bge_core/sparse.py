"""Sparse (lexical) vectors in the shapes vector stores accept.

Milvus rejects a sparse row with no entries, and BGE-M3 gives exactly that for ``""`` or text made
only of special tokens. Every writer in this project stores such a row as one placeholder entry:
the tokenizer's padding id with weight `EMPTY_PLACEHOLDER_WEIGHT`. The padding id never occurs in
a query's lexical weights (special tokens are dropped), so the placeholder adds exactly 0 to every
inner product, and the row's dense vector still takes part in dense and hybrid search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.sparse import csr_array

EMPTY_PLACEHOLDER_WEIGHT = 1e-6


def storable(weights: Mapping[int, float], placeholder_id: int) -> dict[int, float]:
    """`weights` itself, or the placeholder entry when it is empty.

    Example:
        >>> storable({}, placeholder_id=1)
        {1: 1e-06}
    """
    return dict(weights) if weights else {int(placeholder_id): EMPTY_PLACEHOLDER_WEIGHT}


def to_csr(rows: Sequence[Mapping[int, float]], vocab_size: int) -> csr_array:
    """Stack ``{token_id: weight}`` rows into one float32 CSR matrix of shape (n, vocab_size).

    Example:
        >>> to_csr([{3: 0.5}, {}], vocab_size=10).shape
        (2, 10)
    """
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indices: list[int] = []
    data: list[float] = []
    for i, row in enumerate(rows):
        for token in sorted(row):
            indices.append(int(token))
            data.append(float(row[token]))
        indptr[i + 1] = len(indices)
    return csr_array(
        (np.asarray(data, dtype=np.float32), np.asarray(indices, dtype=np.int64), indptr), shape=(len(rows), vocab_size)
    )


def from_csr_row(matrix: csr_array, row: int) -> dict[int, float]:
    """One row of a CSR matrix as ``{token_id: weight}``."""
    start, end = matrix.indptr[row], matrix.indptr[row + 1]
    return {int(i): float(v) for i, v in zip(matrix.indices[start:end], matrix.data[start:end])}
