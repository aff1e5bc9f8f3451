"""ARCHITECTURE §4 on the native API: clear errors naming the index, defined results for odd text."""

from __future__ import annotations

import numpy as np
import pytest

from bge_core import Embedder, Reranker


@pytest.fixture(scope="module")
def m3(m3_path):
    return Embedder(m3_path, device="cpu", reuse_outputs=False)


@pytest.mark.parametrize("bad, index", [([None], 0), (["ok", b"bytes"], 1), (["ok", "ok", 3], 2), ([["nested"]], 0)])
def test_non_str_items_raise_type_error_naming_the_index(m3, bad, index):
    with pytest.raises(TypeError, match=rf"\[{index}\]"):
        m3.encode(bad)


@pytest.mark.parametrize("bad", [None, 42, b"bytes"])
def test_non_sequence_input_raises_type_error(m3, bad):
    with pytest.raises(TypeError):
        m3.encode(bad)


def test_empty_and_whitespace_text_are_valid(m3):
    out = m3.encode(["", "   ", "\n"], sparse=True, colbert=True)
    assert out.dense.shape == (3, m3.dim)
    assert np.isfinite(out.dense).all()
    assert out.lexical_weights[0] == {}
    assert out.colbert_vectors[0].shape == (1, m3.dim)  # only the closing </s>


def test_empty_list_gives_empty_result(m3):
    out = m3.encode([], sparse=True)
    assert out.dense.shape == (0, m3.dim) and out.lexical_weights == []


def test_over_length_is_truncated_by_default_and_rejected_on_request(m3):
    long = "panda " * 3000
    out = m3.encode(["short", long], max_length=64, colbert=True)
    assert out.colbert_vectors[1].shape[0] == 63
    with pytest.raises(ValueError, match="index 1"):
        m3.encode(["short", long], max_length=64, truncate=False)
    assert m3.encode(["short"], max_length=64, truncate=False).dense.shape == (1, m3.dim)


def test_huge_string_is_cut_before_tokenizing(m3):
    import time

    huge = "x" * 10_000_000
    start = time.perf_counter()
    out = m3.encode([huge], max_length=32)
    assert out.dense.shape == (1, m3.dim)
    assert time.perf_counter() - start < 10


def test_sparse_on_a_dense_model_is_a_clear_error(dense_path):
    with pytest.raises(ValueError, match="sparse"):
        Embedder(dense_path, device="cpu").encode(["x"], sparse=True)


def test_reranker_bad_pairs(cross_encoder_path):
    rr = Reranker(cross_encoder_path, device="cpu")
    with pytest.raises(TypeError, match=r"pairs\[1\] passage"):
        rr.score([("q", "p"), ("q", None)])
    with pytest.raises(TypeError, match="query"):
        rr.rerank(None, ["doc"])
    with pytest.raises(TypeError, match=r"documents\[0\]"):
        rr.rerank("q", [None])
    with pytest.raises(TypeError, match="unknown option"):
        rr.score([("q", "p")], cutof_layers=[3])


def test_model_kinds_are_not_mixed_up(m3_path, cross_encoder_path):
    with pytest.raises(ValueError, match="Reranker"):
        Embedder(cross_encoder_path, device="cpu")
    with pytest.raises(ValueError, match="Embedder"):
        Reranker(m3_path, device="cpu")
