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


def one_and_many_batches(ray_cluster, rows: list[dict]):
    """One dataset, one job: the rows once as a single block (ids prefixed "one:") and once split into
    blocks of 8 ("many:"); with ``batch_size=None`` every block is one actor call."""
    import pyarrow as pa

    def block(part: list[dict], prefix: str) -> pa.Table:
        return pa.Table.from_pylist([{**r, "id": f"{prefix}:{r['id']}"} for r in part])

    blocks = [block(rows, "one")] + [block(rows[i:i + 8], "many") for i in range(0, len(rows), 8)]
    return ray_cluster.data.from_arrow(blocks)


def test_m3_dense_sparse_colbert_equal_the_in_process_embedder(ray_cluster, m3_path, m3, passages):
    """A batch holding every text is bitwise the in-process call. Split into batches, a text shares its
    forward with other texts than in the reference call, which changes float32 rounding by < 1e-5
    (tests/reliability/test_determinism.py): token ids are still identical, weights equal to 1e-5."""
    ds = one_and_many_batches(ray_cluster, passages)
    encoded = bge_ray.encode(ds, m3_path, dense=True, sparse=True, colbert=True, batch_size=None,
                             device="cpu").materialize()
    types = dict(zip(encoded.schema().names, encoded.schema().types))
    assert str(types["dense"]) == f"fixed_size_list<item: float>[{m3.dim}]"  # float32 vectors
    assert (str(types["sparse_indices"]), str(types["sparse_values"])) == ("list<item: int32>", "list<item: float>")
    assert str(types["colbert"]) == f"list<item: fixed_size_list<item: float>[{m3.colbert_dim}]>"
    rows = by_id(encoded.take_all())
    expected = m3.encode_documents([p["text"] for p in passages], dense=True, sparse=True, colbert=True)
    assert sorted(rows) == sorted(f"{k}:{p['id']}" for p in passages for k in ("one", "many"))
    for kind in ("one", "many"):
        for i, passage in enumerate(passages):
            row = rows[f"{kind}:{passage['id']}"]
            assert row["text"] == passage["text"] and row["lang"] == passage["lang"]  # other columns pass through
            dense = np.asarray(row["dense"], dtype=np.float32)
            assert dense.shape == (m3.dim,)
            cos = float(dense @ expected.dense[i]) / (np.linalg.norm(dense) * np.linalg.norm(expected.dense[i]))
            assert cos >= 0.99999, (passage["id"], cos)
            weights = dict(zip((int(t) for t in row["sparse_indices"]), (float(w) for w in row["sparse_values"])))
            want = {int(t): float(np.float32(w)) for t, w in expected.lexical_weights[i].items()}
            assert list(row["sparse_indices"]) == sorted(want), passage["id"]
            if kind == "one":
                assert weights == want, passage["id"]
                assert np.array_equal(dense, expected.dense[i])
            else:
                assert max((abs(weights[t] - want[t]) for t in want), default=0.0) <= 1e-5, passage["id"]
            colbert = np.asarray([np.asarray(v, dtype=np.float32) for v in row["colbert"]], dtype=np.float32)
            assert colbert.reshape(-1, m3.colbert_dim).shape == expected.colbert_vectors[i].shape
            assert np.max(np.abs(colbert.reshape(-1, m3.colbert_dim) - expected.colbert_vectors[i]),
                          initial=0.0) <= (0.0 if kind == "one" else 1e-5)


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


def test_rerank_scores_equal_reranker_score(ray_cluster, cross_encoder_path, passages):
    """Bitwise in one batch; across batches within float32 rounding of the logits (relative 1e-5)."""
    pairs = [{"id": str(i), "query": passages[i % 5]["text"], "passage": p["text"]} for i, p in enumerate(passages)]
    ds = one_and_many_batches(ray_cluster, pairs)
    scored = bge_ray.rerank(ds, cross_encoder_path, batch_size=None, device="cpu").materialize()
    assert str(dict(zip(scored.schema().names, scored.schema().types))["score"]) == "float"  # float32
    rows = by_id(scored.take_all())
    expected = Reranker(cross_encoder_path, device="cpu").score([(p["query"], p["passage"]) for p in pairs])
    one = np.array([rows[f"one:{p['id']}"]["score"] for p in pairs], dtype=np.float32)
    many = np.array([rows[f"many:{p['id']}"]["score"] for p in pairs], dtype=np.float32)
    np.testing.assert_array_equal(one, expected)
    np.testing.assert_allclose(many, expected, rtol=1e-5, atol=1e-5)
