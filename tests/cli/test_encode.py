"""`bge encode`: txt, jsonl, parquet in; parquet, npy out; the vectors of core, streamed and written atomically."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bge_core import Embedder
from tests.cli.conftest import assert_error_line, bge


@pytest.fixture(scope="module")
def m3(m3_path) -> Embedder:
    return Embedder(m3_path, device="cpu")


def test_txt_to_parquet_dense_matches_core_and_ids_are_line_numbers(tmp_path, m3_path, m3, corpus):
    texts = [f"{r.text} (first seen here)" for r in corpus[:5]]  # not remembered: the model reads every text
    (tmp_path / "in.txt").write_text("\n".join(texts[:2]) + "\n\n" + "\n".join(texts[2:]) + "\n", encoding="utf-8")
    result = bge("encode", m3_path, tmp_path / "in.txt", "-o", tmp_path / "out.parquet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    read = sum(len(ids) for ids in m3.tokenizer(texts, truncation=True, max_length=m3.max_length)["input_ids"])
    assert f"encoded 5 texts ({read:,} tokens)" in result.stdout and "tokens/s" in result.stdout
    assert "tok/s" in result.stderr  # the progress bar's throughput
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["id", "text", "dense"]
    assert table.column("id").to_pylist() == ["1", "2", "4", "5", "6"]  # line 3 is blank
    assert table.column("text").to_pylist() == texts
    dense = np.asarray(table.column("dense").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(dense, m3.encode_documents(texts).dense, atol=1e-6)


def test_jsonl_to_parquet_with_sparse_and_colbert(tmp_path, m3_path, m3, corpus, corpus_jsonl):
    out = tmp_path / "out.parquet"
    result = bge("encode", m3_path, corpus_jsonl, "-o", out, "--sparse", "--colbert", "--no-dense", "--device", "cpu")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names == ["id", "text", "sparse_indices", "sparse_values", "colbert"]
    assert table.column("id").to_pylist() == [r.id for r in corpus]
    expected = m3.encode_documents([r.text for r in corpus], dense=False, sparse=True, colbert=True)
    for i, weights in enumerate(expected.lexical_weights):
        indices, values = table.column("sparse_indices")[i].as_py(), table.column("sparse_values")[i].as_py()
        assert indices == sorted(weights)
        np.testing.assert_allclose(values, [weights[t] for t in indices], rtol=1e-5)
        np.testing.assert_allclose(np.asarray(table.column("colbert")[i].as_py()), expected.colbert_vectors[i],
                                   atol=1e-6)


def test_parquet_to_npy_and_queries_get_the_query_instruction(tmp_path, dense_path):
    texts = ["what is a panda?", "where is Paris?", "how tall is Everest?"]
    pq.write_table(pa.table({"body": texts}), tmp_path / "in.parquet")
    model = tmp_path / "bge-small-en-v1.5"  # a name the registry knows: it has a query instruction
    model.symlink_to(dense_path, target_is_directory=True)
    core = Embedder(str(model), device="cpu")
    assert core.query_instruction
    vectors = {}
    for flag in ("--queries", None):
        out = tmp_path / f"{flag}.npy"
        result = bge("encode", model, tmp_path / "in.parquet", "-o", out, "--text-field", "body", "--device", "cpu",
                     "--dtype", "fp32", *([flag] if flag else []))
        assert result.exit_code == 0, result.output
        vectors[flag] = np.load(out)
    np.testing.assert_allclose(vectors["--queries"], core.encode_queries(texts).dense, atol=1e-6)
    np.testing.assert_allclose(vectors[None], core.encode_documents(texts).dense, atol=1e-6)
    assert not np.allclose(vectors["--queries"], vectors[None])


def test_streams_in_chunks_one_row_group_each(tmp_path, m3_path, m3):
    texts = [f"streamed text number {i}" for i in range(10)]
    (tmp_path / "in.txt").write_text("\n".join(texts), encoding="utf-8")
    engine = m3.loaded.engine
    calls = engine.forward_calls
    out = tmp_path / "out.parquet"
    result = bge("encode", m3_path, tmp_path / "in.txt", "-o", out, "--chunk-size", "4", "--device", "cpu", "-q")
    assert result.exit_code == 0 and result.stdout == ""
    assert pq.ParquetFile(out).num_row_groups == 3  # 4 + 4 + 2: read, encoded and written a chunk at a time
    assert engine.forward_calls - calls == 3
    assert pq.read_table(out).column("text").to_pylist() == texts


def test_options_reach_the_model(tmp_path, m3_path):
    (tmp_path / "in.txt").write_text("a long text " * 50, encoding="utf-8")
    out = tmp_path / "out.parquet"
    result = bge("encode", m3_path, tmp_path / "in.txt", "-o", out, "--colbert", "--max-length", "8",
                 "--batch-tokens", "64", "--device", "cpu", "--dtype", "fp32")
    assert result.exit_code == 0, result.output
    assert len(pq.read_table(out).column("colbert")[0].as_py()) == 7  # 8 tokens, CLS dropped


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_encode_leaves_nothing_at_output(tmp_path, m3_path, monkeypatch, existing):
    (tmp_path / "in.txt").write_text("\n".join(f"text {i}" for i in range(10)), encoding="utf-8")
    out = tmp_path / "out.parquet"
    if existing:
        out.write_bytes(b"previous result")
    real = Embedder.encode_documents
    calls = []

    def dies_on_the_second_chunk(self, texts, **kwargs):
        calls.append(len(texts))
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return real(self, texts, **kwargs)

    monkeypatch.setattr(Embedder, "encode_documents", dies_on_the_second_chunk)
    result = bge("encode", m3_path, tmp_path / "in.txt", "-o", out, "--chunk-size", "4", "--device", "cpu")
    assert result.exit_code != 0 and isinstance(result.exception, RuntimeError)
    assert calls == [4, 4]  # the first chunk was encoded and written to the temporary file
    assert sorted(os.listdir(tmp_path)) == (["in.txt", "out.parquet"] if existing else ["in.txt"])
    if existing:
        assert out.read_bytes() == b"previous result"


def test_output_kinds_and_heads_are_checked_before_any_work(tmp_path, m3_path, dense_path, corpus_jsonl):
    out = tmp_path / "o.npy"
    assert_error_line(bge("encode", m3_path, corpus_jsonl, "-o", out, "--sparse"), "o.npy", ".npy holds dense")
    assert_error_line(bge("encode", m3_path, corpus_jsonl, "-o", tmp_path / "o.csv"), "must end in .parquet or .npy")
    assert_error_line(bge("encode", dense_path, corpus_jsonl, "-o", tmp_path / "o.parquet", "--sparse", "--device",
                          "cpu"), dense_path, "need a BGE-M3 model")
    usage = bge("encode", m3_path, corpus_jsonl, "-o", tmp_path / "o.parquet", "--no-dense")
    assert usage.exit_code == 2 and "nothing to encode" in usage.stderr
    assert bge("encode", m3_path, corpus_jsonl).exit_code == 2  # -o is required
    assert sorted(os.listdir(tmp_path)) == ["corpus.jsonl"]


def test_empty_input_gives_an_empty_file(tmp_path, m3_path):
    (tmp_path / "in.txt").write_text("\n\n", encoding="utf-8")
    result = bge("encode", m3_path, tmp_path / "in.txt", "-o", tmp_path / "out.npy", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "out.npy").shape == (0, 32)
