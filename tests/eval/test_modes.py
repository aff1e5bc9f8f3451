"""Every search mode returns the run brute-force scoring with bge_core's own functions gives (scores and
pytrec_eval order), top-k cuts exactly (ties at the cut included), and the Milvus backend finds the same top hits."""

from __future__ import annotations

import numpy as np
import pytest

from bge_core import Embedder, colbert_score, combine_scores, lexical_matching_score
from bge_eval import DEFAULT_WEIGHTS, ExactSearch, evaluate, ranked, read_dataset
from bge_eval.search import encode
from tests.cli.conftest import release_lite

MODES = ["dense", "sparse", "colbert", "hybrid"]


@pytest.fixture(scope="module")
def m3(m3_path) -> Embedder:
    return Embedder(m3_path, device="cpu")


@pytest.fixture(scope="module")
def data(beir_dir):
    return read_dataset(beir_dir)


@pytest.fixture(scope="module")
def brute(m3, data) -> dict[str, dict[str, dict[str, float]]]:
    """{mode: {qid: {docid: score}}} for every pair, from bge_core's scoring functions one pair at a time."""
    queries = data.splits["test"].queries
    q = m3.encode_queries(list(queries.values()), dense=True, sparse=True, colbert=True)
    d = m3.encode_documents(data.corpus_texts, dense=True, sparse=True, colbert=True)
    out: dict[str, dict[str, dict[str, float]]] = {mode: {} for mode in MODES}
    for i, qid in enumerate(queries):
        for mode in MODES:
            out[mode][qid] = {}
        for j, docid in enumerate(data.corpus_ids):
            scores = combine_scores(
                float(q.dense[i] @ d.dense[j]),
                lexical_matching_score(q.lexical_weights[i], d.lexical_weights[j]),
                colbert_score(q.colbert_vectors[i], d.colbert_vectors[j]),
                DEFAULT_WEIGHTS,
            )
            for mode, key in zip(MODES, ("dense", "sparse", "colbert", "colbert+sparse+dense")):
                out[mode][qid][docid] = scores[key]
    return out


@pytest.fixture(scope="module")
def full(m3, data):
    return evaluate(data, m3, modes=MODES, k_values=[1, 10], top_k=1000)


@pytest.mark.parametrize("mode", MODES)
def test_run_equals_brute_force_scoring_with_bge_core(full, brute, mode):
    run = full.runs[mode, "NoReranker", "test"]
    assert run.keys() == brute[mode].keys()
    for qid, hits in run.items():
        expected = brute[mode][qid]
        assert hits.keys() == expected.keys()  # top-k 1000 keeps all 30 documents
        assert max(abs(hits[d] - expected[d]) for d in hits) < 1e-5, (qid, mode)
        order = [d for d, _ in ranked(hits)]
        for a, b in zip(order, order[1:]):  # our order is brute force's, up to float noise
            assert expected[a] >= expected[b] - 1e-5, (qid, mode, a, b)
    assert len({round(s, 6) for hits in run.values() for s in hits.values()}) > 30  # scores differ: a real test


@pytest.mark.parametrize("mode", MODES)
def test_top_k_is_the_head_of_the_full_ranking(m3, data, full, mode):
    cut = evaluate(data, m3, modes=[mode], k_values=[1], top_k=4).runs[mode, "NoReranker", "test"]
    for qid, hits in full.runs[mode, "NoReranker", "test"].items():
        assert ranked(cut[qid]) == ranked(hits)[:4]


def test_ties_at_the_cut_keep_the_larger_doc_id(m3, data):
    # Query 2's best dense matches include "3" and its exact duplicate "dup-3"; with top-k cutting between
    # them, the one pytrec_eval ranks first (larger id) must be kept, whatever the chunking.
    full = evaluate(data, m3, k_values=[1], top_k=1000).runs["dense", "NoReranker", "test"]
    for qid, hits in full.items():
        order = ranked(hits)
        position = [d for d, _ in order].index("dup-3")
        assert order[position + 1][0] == "3"  # always adjacent: same score, next id below
        cut = evaluate(data, m3, k_values=[1], top_k=position + 1).runs["dense", "NoReranker", "test"][qid]
        assert "dup-3" in cut and "3" not in cut
        break


def test_modes_need_a_bge_m3(dense_path, data):
    with pytest.raises(ValueError, match="need a BGE-M3"):
        evaluate(data, Embedder(dense_path, device="cpu"), modes=["sparse"])


def test_milvus_backend_agrees_with_exact_search_on_the_top_hits(tmp_path, m3, data, full):
    uri = str(tmp_path / "eval.db")
    try:
        via_milvus = evaluate(data, m3, modes=["dense"], backend="milvus", uri=uri, k_values=[1, 10], top_k=10)
        again = evaluate(data, m3, modes=["dense"], backend="milvus", uri=uri, k_values=[1, 10], top_k=10)
    finally:
        release_lite(uri)
    exact = full.runs["dense", "NoReranker", "test"]
    for qid, hits in via_milvus.runs["dense", "NoReranker", "test"].items():
        assert len(hits) == 10
        best = ranked(exact[qid])[:10]
        # Same scores, rank by rank; the same documents except where scores tie.
        assert np.allclose(sorted(hits.values(), reverse=True), [s for _, s in best], atol=1e-5)
        assert ranked(hits)[0][0] in {d for d, s in best if abs(s - best[0][1]) < 1e-5}
    assert again.runs == via_milvus.runs  # the second run reuses the indexed collection


def test_chunked_search_equals_one_chunk(m3, data):
    queries = data.splits["test"].queries
    parts = {"dense", "sparse", "colbert"}
    docs = encode(m3, data.corpus_texts, queries=False, parts=parts)
    encoded = encode(m3, list(queries.values()), queries=True, parts=parts)
    whole = ExactSearch(data.corpus_ids, docs)
    chunked = ExactSearch(data.corpus_ids, docs, budget=1)  # chunks of k+1 documents (ColBERT: one)
    for mode in MODES:
        for k in (3, 30):
            a = whole.search(mode, encoded, list(queries), k, ignore_identical_ids=True)
            b = chunked.search(mode, encoded, list(queries), k, ignore_identical_ids=True)
            for qid in a:
                assert [d for d, _ in ranked(a[qid])] == [d for d, _ in ranked(b[qid])], (mode, k, qid)
                assert np.allclose([s for _, s in ranked(a[qid])], [s for _, s in ranked(b[qid])], atol=1e-6)
                assert qid not in a[qid]
