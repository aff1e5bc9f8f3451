"""The padding-free (packed) path, run on CPU: the same outputs as padded batches.

On CUDA the packed path uses PyTorch's varlen flash kernel; on CPU the same packing runs each
sequence through SDPA, which tests the packing, position ids and every head on packed tokens.
"""

from __future__ import annotations

import numpy as np

from bge_core import Embedder, Reranker


def test_m3_packed_matches_padded(m3_path, parity_texts):
    padded = Embedder(m3_path, device="cpu", packed=False, reuse_outputs=False)
    packed = Embedder(m3_path, device="cpu", packed=True, reuse_outputs=False)
    assert packed.loaded.engine.packed and not padded.loaded.engine.packed
    assert packed.loaded is not padded.loaded
    a = padded.encode(parity_texts, sparse=True, colbert=True, max_length=64)
    b = packed.encode(parity_texts, sparse=True, colbert=True, max_length=64)
    np.testing.assert_allclose(b.dense, a.dense, atol=1e-5)
    for x, y in zip(a.lexical_weights, b.lexical_weights, strict=True):
        assert set(x) == set(y)
        assert max((abs(x[k] - y[k]) for k in x), default=0) < 1e-4
    for x, y in zip(a.colbert_vectors, b.colbert_vectors, strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(y, x, atol=1e-4)


def test_dense_and_decoder_packed_match_padded(dense_path, llm_embedder_path, parity_texts):
    for path, kwargs in [(dense_path, {}), (dense_path, {"pooling": "mean"}), (llm_embedder_path, {})]:
        a = Embedder(path, device="cpu", packed=False, **kwargs).encode(parity_texts).dense
        b = Embedder(path, device="cpu", packed=True, **kwargs).encode(parity_texts).dense
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_cross_encoder_packed_matches_padded(cross_encoder_path, parity_texts):
    pairs = [(q, p) for q in parity_texts[:3] for p in parity_texts]
    a = Reranker(cross_encoder_path, device="cpu", packed=False).score(pairs)
    b = Reranker(cross_encoder_path, device="cpu", packed=True).score(pairs)
    np.testing.assert_allclose(b, a, atol=1e-4)
