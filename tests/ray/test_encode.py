"""`bge_ray.encode` / `bge_ray.rerank` give exactly what the in-process `Embedder` / `Reranker` give."""

from __future__ import annotations

import numpy as np
import pytest

import bge_ray
from bge_core import Embedder, Reranker


@pytest.fixture(scope="module")
def m3(m3_path):
    return Embedder(m3_path, device="cpu")


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {row["id"]: row for row in rows}


@pytest.mark.parametrize("blocks, batch_size", [(1, 64), (4, 16)], ids=["one-batch", "many-batches"])
def test_m3_dense_sparse_colbert_equal_the_in_process_embedder(ray_cluster, m3_path, m3, passages, blocks,
                                                               batch_size):
    """One batch holding every text is bitwise the in-process call. Split into batches, a text shares its
    forward with other texts than in the reference call, which changes float32 rounding by < 1e-5
    (tests/reliability/test_determinism.py): token ids are still identical, weights equal to 1e-5."""
    ds = ray_cluster.data.from_items(passages, override_num_blocks=blocks)
    rows = by_id(bge_ray.encode(ds, m3_path, dense=True, sparse=True, colbert=True, batch_size=batch_size,
                                device="cpu").take_all())
    expected = m3.encode_documents([p["text"] for p in passages], dense=True, sparse=True, colbert=True)
    assert sorted(rows) == sorted(p["id"] for p in passages)
    for i, passage in enumerate(passages):
        row = rows[passage["id"]]
        assert row["text"] == passage["text"] and row["lang"] == passage["lang"]  # other columns pass through
        dense = np.asarray(row["dense"], dtype=np.float32)
        assert dense.dtype == np.float32 and dense.shape == (m3.dim,)
        cos = float(dense @ expected.dense[i]) / (np.linalg.norm(dense) * np.linalg.norm(expected.dense[i]))
        assert cos >= 0.99999, (passage["id"], cos)
        weights = dict(zip((int(t) for t in row["sparse_indices"]), (float(w) for w in row["sparse_values"])))
        want = {int(t): float(np.float32(w)) for t, w in expected.lexical_weights[i].items()}
        assert sorted(weights) == sorted(want), passage["id"]
        if blocks == 1:
            assert weights == want, passage["id"]
        else:
            assert max((abs(weights[t] - want[t]) for t in want), default=0.0) <= 1e-5, passage["id"]
        assert list(row["sparse_indices"]) == sorted(row["sparse_indices"])
        colbert = np.stack([np.asarray(v, dtype=np.float32) for v in row["colbert"]]) if len(row["colbert"]) \
            else np.zeros((0, m3.colbert_dim), np.float32)
        assert colbert.shape == expected.colbert_vectors[i].shape
        assert np.max(np.abs(colbert - expected.colbert_vectors[i]), initial=0.0) <= 1e-5


def test_queries_get_the_query_instruction_in_input_order(ray_cluster, dense_path, passages):
    from ray.data import DataContext

    texts = [p["text"] for p in passages[:12]]
    instruction = "Represent this sentence for searching relevant passages: "
    model = Embedder(dense_path, device="cpu", query_instruction=instruction)
    context = DataContext.get_current()
    context.execution_options.preserve_order = True
    try:
        ds = ray_cluster.data.from_items([{"text": t} for t in texts], override_num_blocks=3)
        rows = bge_ray.encode(ds, dense_path, queries=True, batch_size=5, device="cpu",
                              query_instruction=instruction).take_all()
    finally:
        context.execution_options.preserve_order = False
    assert [r["text"] for r in rows] == texts  # no id column: input order kept
    got = np.stack([np.asarray(r["dense"], dtype=np.float32) for r in rows])
    queries, documents = model.encode_queries(texts).dense, model.encode_documents(texts).dense
    assert np.min(np.sum(got * queries, axis=1)) >= 0.99999
    assert np.max(np.sum(got * documents, axis=1)) < 0.9999  # the instruction changed the vectors


@pytest.mark.parametrize("blocks, batch_size", [(1, 64), (3, 8)], ids=["one-batch", "many-batches"])
def test_rerank_scores_equal_reranker_score(ray_cluster, cross_encoder_path, passages, blocks, batch_size):
    """Bitwise in one batch; across batches within float32 rounding of the logits (relative 1e-5)."""
    pairs = [{"id": str(i), "query": passages[i % 5]["text"], "passage": p["text"]} for i, p in enumerate(passages)]
    ds = ray_cluster.data.from_items(pairs, override_num_blocks=blocks)
    rows = by_id(bge_ray.rerank(ds, cross_encoder_path, batch_size=batch_size, device="cpu").take_all())
    expected = Reranker(cross_encoder_path, device="cpu").score([(p["query"], p["passage"]) for p in pairs])
    got = np.array([rows[p["id"]]["score"] for p in pairs], dtype=np.float32)
    assert got.dtype == np.float32
    if blocks == 1:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
