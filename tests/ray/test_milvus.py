"""`bge_ray.index` / `MilvusDatasink` into Milvus Lite: exact counts, idempotent re-runs, a crashed actor, bad rows."""

from __future__ import annotations

import numpy as np
import pytest

import bge_ray
from bge_milvus import HybridCollection, backend
from tests.ray.conftest import release_lite


def stored(uri: str, name: str) -> tuple[int, list[str]]:
    """count(*) and every stored id, read by a client of this (the driver's) process."""
    client = backend.open_client(uri, "", "")
    try:
        if not client.has_collection(name):
            return 0, []
        client.load_collection(name)
        ids = [row["id"] for row in client.query(name, filter="", output_fields=["id"], limit=16384)]
        return backend.count(client, name), sorted(ids)
    finally:
        client.close()
        release_lite(uri)


@pytest.fixture
def uri(tmp_path) -> str:
    return str(tmp_path / "ray.db")


@pytest.fixture(scope="module")
def indexed(ray_cluster, m3_path, passages, tmp_path_factory):
    """The passages indexed once for this module: (uri, collection name, the sink)."""
    uri = str(tmp_path_factory.mktemp("milvus") / "ray.db")
    ds = ray_cluster.data.from_items(passages, override_num_blocks=4)
    sink = bge_ray.index(ds, m3_path, "docs", uri=uri, batch_size=16, device="cpu")
    yield uri, "docs", sink
    release_lite(uri)


def test_index_stores_every_row_once_as_hybrid_collection_rows(indexed, m3_path, passages):
    uri, name, sink = indexed
    assert (sink.rows_written, sink.count) == (len(passages), len(passages))
    assert stored(uri, name) == (len(passages), sorted(p["id"] for p in passages))
    # The rows are HybridCollection rows: it opens the collection and finds a passage by its own text.
    with HybridCollection(name, m3_path, uri=uri, device="cpu") as docs:
        target = passages[1]
        hit = docs.search(target["text"], k=1, mode="dense")[0]
        assert (hit.id, hit.text, hit.metadata) == (target["id"], target["text"], {"lang": target["lang"]})
    release_lite(uri)


def test_rows_without_ids_get_content_ids_and_empty_texts_the_sparse_placeholder(ray_cluster, m3_path, uri):
    from bge_milvus import content_id

    texts = ["first text", "", "first text", "third one"]  # a repeated text is one row
    ds = ray_cluster.data.from_items([{"text": t} for t in texts])
    assert bge_ray.index(ds, m3_path, "anon", uri=uri, device="cpu").count == 3
    client = backend.open_client(uri, "", "")
    try:
        client.load_collection("anon")
        rows = {r["id"]: r for r in client.query("anon", filter="", output_fields=["id", "sparse", "dense"], limit=10)}
    finally:
        client.close()
        release_lite(uri)
    assert sorted(rows) == sorted({content_id(t) for t in texts})
    empty = rows[content_id("")]
    assert len(empty["sparse"]) == 1 and next(iter(empty["sparse"].values())) == pytest.approx(1e-6)
    assert np.linalg.norm(np.asarray(empty["dense"])) == pytest.approx(1.0, abs=1e-5)


BAD_ROWS = [
    ({"id": "doc-bad", "text": 5, "lang": "en"}, "column 'text' must hold a string, got int"),
    ({"id": "doc-bad", "text": None, "lang": "en"}, "column 'text' is missing (null)"),
    # Within a block of rows that have the column, a row without it reads as null.
    ({"id": "doc-bad", "body": "no text here", "lang": "en"}, "column 'text' is missing (null)"),
]


def test_a_bad_row_fails_the_job_naming_it_and_nothing_is_written(ray_cluster, indexed, m3_path, passages):
    uri, name, _ = indexed
    for bad_row, problem in BAD_ROWS:
        rows = [{**p, "id": f"new-{p['id']}"} for p in passages[10:]] + [bad_row] + passages[:5]
        ds = ray_cluster.data.from_items(rows, override_num_blocks=4)
        with pytest.raises(bge_ray.BadRowError) as error:
            bge_ray.index(ds, m3_path, name, uri=uri, batch_size=8, device="cpu")
        message = str(error.value)
        assert message == f"row {len(passages) - 10 + 1} (id 'doc-bad'): {problem}", message
    assert stored(uri, name) == (len(passages), sorted(p["id"] for p in passages))  # none of the new rows


def test_a_dataset_without_the_text_column_is_refused_naming_the_columns(ray_cluster):
    ds = ray_cluster.data.from_items([{"id": "a", "body": "x"}, {"id": "b", "body": "y"}])
    with pytest.raises(bge_ray.BadRowError, match=r"^row 1 \(id 'a'\): no column 'text' \(columns: id, body\)$"):
        bge_ray.validate(ds)
    assert bge_ray.validate(ds, text_column="body") == 2


def test_an_over_long_id_is_refused_before_writing(ray_cluster, m3_path, uri):
    ds = ray_cluster.data.from_items([{"id": "x" * (backend.ID_MAX_LENGTH + 1), "text": "t"}])
    with pytest.raises(bge_ray.BadRowError, match="row 1 .*column 'id' is longer than 512 bytes"):
        bge_ray.index(ds, m3_path, "ids", uri=uri, device="cpu")
    assert stored(uri, "ids") == (0, [])
