"""Bulk-import files: pymilvus bulk-writer Parquet for the `HybridCollection` schema, checked against it.

Milvus Lite has no import API, so the files are checked as far as Lite allows: the schema is the one Milvus
Lite reports for the collection, the bulk writer validated every row against it while writing, the Parquet
columns match its fields, every row is there once with the vectors `bge_ray.encode` computed, and Milvus
Lite itself accepts the file's rows (inserted through the client).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import bge_ray
from bge_core import Embedder
from bge_milvus import backend
from tests.ray.conftest import release_lite


def test_bulk_files_match_the_collection_schema_and_hold_every_row(ray_cluster, m3_path, passages, tmp_path):
    uri = str(tmp_path / "bulk.db")
    m3 = Embedder(m3_path, device="cpu")
    schema = bge_ray.collection_schema("bulk", uri=uri, dim=m3.dim)
    release_lite(uri)
    assert [f.name for f in schema.fields] == ["id", "text", "dense", "sparse", "metadata"]
    ds = ray_cluster.data.from_items(passages, override_num_blocks=2)
    sink = bge_ray.write_bulk_files(ds, m3_path, schema, tmp_path / "files", device="cpu")
    assert sink.rows_written == len(passages)
    assert sink.files and all(len(group) == 1 and group[0].endswith(".parquet") for group in sink.files)

    table = pa.concat_tables([pq.read_table(group[0]) for group in sink.files])
    assert table.column_names == ["id", "text", "dense", "sparse", "metadata"]
    rows = {row["id"]: row for row in table.to_pylist()}
    assert sorted(rows) == sorted(p["id"] for p in passages) and table.num_rows == len(passages)
    expected = m3.encode_documents([p["text"] for p in passages], dense=True, sparse=True)
    for i, passage in enumerate(passages):
        row = rows[passage["id"]]
        assert row["text"] == passage["text"]
        assert json.loads(row["metadata"]) == {"lang": passage["lang"]}
        dense = np.asarray(row["dense"], dtype=np.float32)
        assert dense.shape == (m3.dim,) and float(dense @ expected.dense[i]) >= 0.99999
        sparse = {int(k): v for k, v in json.loads(row["sparse"]).items()}  # sparse vectors are JSON in Parquet
        want = expected.lexical_weights[i] or {m3.pad_token_id: 1e-6}  # the placeholder of an empty row
        assert sorted(sparse) == sorted(want)
        assert max(abs(sparse[t] - want[t]) for t in want) <= 1e-5

    # Milvus Lite accepts the rows exactly as the files hold them.
    client = backend.open_client(uri, "", "")
    try:
        client.insert("bulk", [{**row, "sparse": {int(k): v for k, v in json.loads(row["sparse"]).items()},
                                "metadata": json.loads(row["metadata"])} for row in rows.values()])
        assert backend.count(client, "bulk") == len(passages)
    finally:
        client.close()
        release_lite(uri)
