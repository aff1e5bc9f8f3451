"""FlagReranker parity (cross-encoder, bge-reranker-v2-m3 layout) with FlagEmbedding 1.4.2, fp32 CPU."""

from __future__ import annotations

import FlagEmbedding as FE
import numpy as np
import pytest

from bge_core import Reranker, compat

TOL = 1e-4


@pytest.fixture(scope="module")
def pairs(parity_texts_module):
    t = parity_texts_module
    empty = t.index("")
    out = [(t[i], t[j]) for i in range(len(t)) for j in (0, 1, 2, empty, len(t) - 1) if i != j]
    out.append((t[-1], t[1]))  # an over-long query: cut to 3/4 of max_length
    return out


@pytest.fixture(scope="module")
def parity_texts_module():
    from tests.conftest import PARITY_TEXTS

    return list(PARITY_TEXTS)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("max_length", [512, 40])
def test_flag_reranker_parity(cross_encoder_path, pairs, normalize, max_length):
    fe = FE.FlagReranker(cross_encoder_path, devices="cpu", use_fp16=False)
    ours = compat.FlagReranker(cross_encoder_path, devices="cpu", use_fp16=False)
    theirs = fe.compute_score(pairs, max_length=max_length, normalize=normalize)
    mine = ours.compute_score(pairs, max_length=max_length, normalize=normalize)
    assert isinstance(mine, list) and all(isinstance(x, float) for x in mine)
    np.testing.assert_allclose(mine, theirs, atol=TOL)
    assert np.std(mine) > 1e-3  # the scores really differ between pairs


def test_single_pair_is_a_list_and_instructions_apply(cross_encoder_path, pairs):
    kw = dict(devices="cpu", query_instruction_for_rerank="query: ", passage_instruction_for_rerank="passage: ")
    fe, ours = FE.FlagReranker(cross_encoder_path, **kw), compat.FlagReranker(cross_encoder_path, **kw)
    one = ours.compute_score(pairs[0])
    assert isinstance(one, list) and len(one) == 1
    np.testing.assert_allclose(ours.compute_score(pairs), fe.compute_score(pairs), atol=TOL)


def test_native_rerank_orders_by_score(cross_encoder_path, pairs):
    rr = Reranker(cross_encoder_path, device="cpu")
    query = pairs[0][0]
    docs = [p for q, p in pairs if q == query]
    scores = rr.score([(query, d) for d in docs])
    hits = rr.rerank(query, docs, top_k=2)
    assert [h.index for h in hits] == list(np.argsort(-scores)[:2])
    assert hits[0].score == pytest.approx(float(scores.max()))
    assert rr.rerank(query, []) == []
    assert rr.score([]).shape == (0,)


def test_truncate_false_rejects_long_pairs(cross_encoder_path, pairs):
    rr = Reranker(cross_encoder_path, device="cpu", max_length=40)
    with pytest.raises(ValueError, match="index"):
        rr.score(pairs, truncate=False)
    short = [("panda", "bear")]
    assert rr.score(short, truncate=False).shape == (1,)


def test_auto_reranker(cross_encoder_path):
    assert type(compat.FlagAutoReranker.from_finetuned(cross_encoder_path, devices="cpu")) is compat.FlagReranker
