"""`BGERerankFunction` against pymilvus-model's FlagEmbedding-based class of the same name."""

from __future__ import annotations

import importlib.util

import pytest

from bge_core import Reranker
from bge_milvus import BGERerankFunction, RerankResult

QUERY = "What do giant pandas eat?"


@pytest.fixture(scope="module")
def reference_function(cross_encoder_path: str):
    missing = [m for m in ("FlagEmbedding", "peft") if importlib.util.find_spec(m) is None]
    assert not missing, f"the pymilvus-model oracle needs {missing} pre-installed (bge-plugins[test])"
    from pymilvus.model.reranker import BGERerankFunction as Reference

    # The tiny checkpoint's directory name is not in FlagEmbedding's model table: name its class.
    return Reference(cross_encoder_path, use_fp16=False, device="cpu", model_class="encoder-only-base")


@pytest.mark.parametrize("top_k", [0, 3])
def test_results_equal_pymilvus_model(reference_function, cross_encoder_path, parity_texts, top_k) -> None:
    ours = BGERerankFunction(cross_encoder_path, use_fp16=False, device="cpu", model_class="encoder-only-base")
    expected = reference_function(QUERY, parity_texts, top_k=top_k)
    got = ours(QUERY, parity_texts, top_k=top_k)
    assert len(got) == len(expected) == (top_k or len(parity_texts))
    for a, b in zip(got, expected):
        assert type(a) is type(b)  # pymilvus-model's own RerankResult
        assert (a.index, a.text) == (b.index, b.text)
        assert isinstance(a.score, float) and a.score == pytest.approx(b.score, abs=1e-4)
    assert [r.score for r in got] == sorted((r.score for r in got), reverse=True)


def test_is_a_pymilvus_model_rerank_function(cross_encoder_path: str) -> None:
    from pymilvus.model.base import BaseRerankFunction
    from pymilvus.model.base import RerankResult as ReferenceResult

    core = Reranker(cross_encoder_path, device="cpu")
    fn = BGERerankFunction(core)
    assert isinstance(fn, BaseRerankFunction) and RerankResult is ReferenceResult
    assert fn.reranker.loaded is core.loaded  # an already-loaded Reranker is shared
    results = fn(QUERY, ["pandas eat bamboo", "Paris is in France"], top_k=1)
    assert len(results) == 1 and results[0].to_dict().keys() == {"text", "score", "index"}
    assert 0.0 < results[0].score < 1.0  # normalize=True: sigmoid, as pymilvus-model
    raw = BGERerankFunction(core, normalize=False)(QUERY, ["pandas eat bamboo"], top_k=1)[0].score
    assert raw == pytest.approx(float(core.score([(QUERY, "pandas eat bamboo")])[0]), abs=1e-6)


def test_bad_input(cross_encoder_path: str) -> None:
    fn = BGERerankFunction(cross_encoder_path, device="cpu")
    assert fn(QUERY, [], top_k=5) == []
    with pytest.raises(TypeError, match=r"\[1\]"):
        fn(QUERY, ["fine", 3])
    with pytest.raises(TypeError, match="no_such_option"):
        BGERerankFunction(cross_encoder_path, device="cpu", no_such_option=True)
    with pytest.raises(ValueError, match="model_class"):
        BGERerankFunction(cross_encoder_path, device="cpu", model_class="encoder-only-nonsense")
