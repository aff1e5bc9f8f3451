"""`BGEM3EmbeddingFunction` against pymilvus-model's FlagEmbedding-based class of the same name."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from scipy.sparse import csr_array

from bge_core import Embedder
from bge_milvus import BGEM3EmbeddingFunction


@pytest.fixture(scope="module")
def reference_function(m3_path: str):
    # pymilvus-model pip-installs missing dependencies at run time: never let it; they are test extras.
    missing = [m for m in ("FlagEmbedding", "peft", "datasets") if importlib.util.find_spec(m) is None]
    assert not missing, f"the pymilvus-model oracle needs {missing} pre-installed (bge-plugins[test])"
    from pymilvus.model.hybrid import BGEM3EmbeddingFunction as Reference

    return Reference(m3_path, device="cpu", use_fp16=False, return_colbert_vecs=True)


def test_outputs_equal_pymilvus_model(reference_function, m3_path: str, parity_texts: list[str]) -> None:
    ours = BGEM3EmbeddingFunction(m3_path, device="cpu", use_fp16=False, return_colbert_vecs=True)
    expected, got = reference_function(parity_texts), ours(parity_texts)

    assert set(got) == set(expected) == {"dense", "sparse", "colbert_vecs"}
    assert ours.dim == reference_function.dim
    assert isinstance(got["dense"], list) and len(got["dense"]) == len(expected["dense"])
    for a, b in zip(got["dense"], expected["dense"]):
        assert isinstance(a, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, atol=1e-4)

    sparse, reference = got["sparse"], expected["sparse"]
    assert isinstance(sparse, csr_array) and type(sparse) is type(reference)
    assert sparse.shape == reference.shape and sparse.dtype == reference.dtype == np.float64
    for row in range(sparse.shape[0]):  # same tokens per row, weights within 1e-4
        ours_row, ref_row = sparse[[row]], reference[[row]]
        assert set(ours_row.indices.tolist()) == set(ref_row.indices.tolist()), f"row {row}"
    np.testing.assert_allclose(sparse.toarray(), reference.toarray(), atol=1e-4)
    assert sparse[[parity_texts.index("")]].nnz == 0  # "" has no lexical weights, in both

    assert len(got["colbert_vecs"]) == len(expected["colbert_vecs"])
    for a, b in zip(got["colbert_vecs"], expected["colbert_vecs"]):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, atol=1e-4)

    # pymilvus-model's three methods are one; so are ours.
    for method in ("encode_documents", "encode_queries"):
        other = getattr(ours, method)(parity_texts)
        np.testing.assert_array_equal(np.stack(other["dense"]), np.stack(got["dense"]))
        assert (other["sparse"] != got["sparse"]).nnz == 0


def test_is_a_pymilvus_model_embedding_function(m3: Embedder) -> None:
    from pymilvus.model.base import BaseEmbeddingFunction

    ef = BGEM3EmbeddingFunction(m3)
    assert isinstance(ef, BaseEmbeddingFunction)
    assert ef.embedder.loaded is m3.loaded  # an already-loaded Embedder is shared, not reloaded


def test_dense_sparse_and_colbert_come_from_one_forward(m3: Embedder) -> None:
    ef = BGEM3EmbeddingFunction(m3, return_colbert_vecs=True)
    texts = [f"one forward check number {i}" for i in range(5)]
    before = m3.loaded.engine.rows_forwarded
    out = ef(texts)
    assert m3.loaded.engine.rows_forwarded - before == len(texts)
    assert len(out["dense"]) == out["sparse"].shape[0] == len(out["colbert_vecs"]) == len(texts)


def test_keywords_map_to_core(m3: Embedder) -> None:
    texts = ["Pandas eat bamboo shoots and leaves almost exclusively.", "Milvus is a vector database."]
    dense_only = BGEM3EmbeddingFunction(m3, return_sparse=False)(texts)
    assert set(dense_only) == {"dense"}
    sparse_only = BGEM3EmbeddingFunction(m3, return_dense=False, devices="cpu")(texts)
    assert set(sparse_only) == {"sparse"}

    raw = BGEM3EmbeddingFunction(m3, normalize_embeddings=False)(texts)["dense"]
    assert not np.allclose([np.linalg.norm(v) for v in raw], 1.0)
    unit = BGEM3EmbeddingFunction(m3)(texts)["dense"]
    np.testing.assert_allclose([np.linalg.norm(v) for v in unit], 1.0, atol=1e-5)

    short = BGEM3EmbeddingFunction(m3, passage_max_length=6)(texts)
    expected = m3.encode(texts, max_length=6, sparse=True)
    np.testing.assert_allclose(np.stack(short["dense"]), expected.dense, atol=1e-6)
    assert short["sparse"][[0]].nnz == len(expected.lexical_weights[0])

    with pytest.raises(TypeError, match="no_such_option"):
        BGEM3EmbeddingFunction(m3, no_such_option=1)


def test_bad_input(m3: Embedder) -> None:
    ef = BGEM3EmbeddingFunction(m3)
    with pytest.raises(TypeError, match=r"\[1\]"):
        ef(["fine", None])
    out = ef(["", "The giant panda is a bear native to south central China."])
    assert out["sparse"].shape[0] == 2 and out["sparse"][[0]].nnz == 0 and out["sparse"][[1]].nnz > 0
    assert ef([])["sparse"].shape == (0, ef.dim["sparse"])


def test_dense_model_is_refused(dense_path: str) -> None:
    with pytest.raises(ValueError, match="BGE-M3"):
        BGEM3EmbeddingFunction(dense_path, device="cpu")
