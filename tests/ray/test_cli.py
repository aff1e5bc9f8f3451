"""`bge encode --ray` and `bge index --ray`: the same files and collections as without `--ray`."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from bge_ray.encode import FAULT_ENV
from tests.cli.conftest import assert_error_line, bge
from tests.ray.conftest import release_lite
from tests.ray.test_milvus import stored


@pytest.fixture
def corpus_jsonl(tmp_path, passages):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages), encoding="utf-8")
    return path


def test_encode_with_ray_writes_the_same_parquet_as_without(ray_cluster, m3_path, tmp_path, passages):
    source = tmp_path / "texts.txt"  # no ids: rows are numbered, so input order matters
    source.write_text("".join(p["text"].replace("\n", " ") + "\n" for p in passages if p["text"].strip()),
                      encoding="utf-8")
    plain, on_ray = tmp_path / "plain.parquet", tmp_path / "ray.parquet"
    common = ["--sparse", "--colbert", "--device", "cpu", "-q"]
    assert bge("encode", m3_path, source, "-o", plain, *common).exit_code == 0
    result = bge("encode", m3_path, source, "-o", on_ray, *common, "--ray")
    assert result.exit_code == 0, (result.output, result.exception)
    want, got = pq.read_table(plain), pq.read_table(on_ray)
    assert got.schema == want.schema  # same columns and types
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert got.column("text").to_pylist() == want.column("text").to_pylist()
    assert got.column("sparse_indices").to_pylist() == want.column("sparse_indices").to_pylist()
    for name in ("dense", "sparse_values", "colbert"):
        a = np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in got.column(name).to_pylist()])
        b = np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in want.column(name).to_pylist()])
        assert np.max(np.abs(a - b)) <= 1e-5, name


def test_index_with_ray_survives_a_crashed_actor_and_a_rerun_changes_nothing(
        ray_cluster, m3_path, tmp_path, passages, corpus_jsonl, monkeypatch):
    """The first run's encoder actor dies in its second batch (test hook): Ray restarts it and retries the
    batch. Every id is stored exactly once; running the same command again leaves the same rows."""
    uri = str(tmp_path / "cli.db")
    args = ["index", corpus_jsonl, "--collection", "docs", "--uri", uri, "--model", m3_path, "--device", "cpu",
            "--batch-size", "8", "-q", "--ray"]
    marker = tmp_path / "crashed"
    monkeypatch.setenv(FAULT_ENV, str(marker))
    first = bge(*args)
    assert first.exit_code == 0, (first.output, first.exception)
    assert marker.exists(), "the fault hook did not fire: the test proved nothing"
    assert f"the collection holds {len(passages)} rows" in first.output
    assert stored(uri, "docs") == (len(passages), sorted(p["id"] for p in passages))
    again = bge(*args)
    assert again.exit_code == 0 and f"the collection holds {len(passages)} rows" in again.output, again.output
    assert stored(uri, "docs") == (len(passages), sorted(p["id"] for p in passages))
    release_lite(uri)


def test_index_with_ray_names_a_bad_line_and_writes_nothing(ray_cluster, m3_path, tmp_path, passages):
    uri = str(tmp_path / "bad.db")
    path = tmp_path / "bad.jsonl"
    rows = [json.dumps(p) for p in passages[:6]] + ['{"id": "doc-x", "text": 42}'] + [json.dumps(passages[7])]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = bge("index", path, "--collection", "bad", "--uri", uri, "--model", m3_path, "--device", "cpu",
                 "-q", "--ray")
    assert_error_line(result, f"{path}: row 7 (id 'doc-x'): column 'text' must hold a string, got int")
    assert stored(uri, "bad") == (0, [])


def test_an_unreadable_file_is_one_error_line(ray_cluster, m3_path, tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "fine"}\nnot json at all\n', encoding="utf-8")
    result = bge("encode", m3_path, path, "-o", tmp_path / "out.parquet", "-q", "--ray")
    assert_error_line(result, f"{path}: cannot read (")
    assert not (tmp_path / "out.parquet").exists()
    missing = bge("encode", m3_path, tmp_path / "nope.jsonl", "-o", tmp_path / "out.parquet", "-q", "--ray")
    assert_error_line(missing, "nope.jsonl: no such file")
