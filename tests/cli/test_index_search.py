"""`bge index` and `bge search` on Milvus Lite: idempotent, resumable, every mode, reranking, table and JSON."""

from __future__ import annotations

import json
import os

import pytest

from bge_core import Embedder, Reranker
from bge_milvus import HybridCollection, content_id
from tests.cli.conftest import assert_error_line, bge, write_jsonl


def count(db: str, m3_path: str, name: str) -> int:
    with HybridCollection(name, Embedder(m3_path, device="cpu"), uri=db) as coll:
        return coll.count()


def index(db: str, m3_path: str, path, name: str, *extra: str):
    return bge("index", path, "--collection", name, "--uri", db, "--model", m3_path, "--device", "cpu", *extra)


def search(db: str, m3_path: str, query: str, name: str, *extra: str):
    return bge("search", query, "--collection", name, "--uri", db, "--model", m3_path, "--device", "cpu", *extra)


def test_index_twice_leaves_the_row_count_unchanged(db, m3_path, tmp_path, corpus):
    texts = [r.text for r in corpus]
    (tmp_path / "in.txt").write_text("\n".join(texts + texts[:3]) + "\n", encoding="utf-8")  # repeats collapse
    first = index(db, m3_path, tmp_path / "in.txt", "twice")
    assert first.exit_code == 0, first.output
    assert f"the collection holds {len(texts)} rows" in first.stdout
    second = index(db, m3_path, tmp_path / "in.txt", "twice")
    assert second.exit_code == 0, second.output
    assert "(0 embedded" in second.stdout  # nothing was embedded again
    assert count(db, m3_path, "twice") == len(texts)
    hits = json.loads(search(db, m3_path, texts[4], "twice", "--json", "-k", "1").stdout)["hits"]
    assert hits[0]["id"] == content_id(texts[4]) and hits[0]["metadata"] == {}  # txt rows: id = hash of the text


def test_resume_after_a_failure_adds_only_what_is_missing(db, m3_path, tmp_path, corpus, corpus_jsonl, monkeypatch):
    real = HybridCollection.add
    calls = []

    def dies_on_the_second_batch(self, texts, *args, **kwargs):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C half-way
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(HybridCollection, "add", dies_on_the_second_batch)
    failed = index(db, m3_path, corpus_jsonl, "resume", "--batch-size", "5")
    assert failed.exit_code != 0
    assert count(db, m3_path, "resume") == 5  # the first batch, whole

    monkeypatch.setattr(HybridCollection, "add", real)
    engine = Embedder(m3_path, device="cpu").loaded.engine
    engine_rows = engine.rows_forwarded
    done = index(db, m3_path, corpus_jsonl, "resume", "--batch-size", "5")
    assert done.exit_code == 0, done.output
    assert count(db, m3_path, "resume") == len(corpus)
    assert engine.rows_forwarded - engine_rows <= len(corpus) - 5  # stored rows were not embedded again
    hits = json.loads(search(db, m3_path, corpus[7].text, "resume", "--json", "-k", "12").stdout)["hits"]
    assert sorted(h["id"] for h in hits) == sorted(r.id for r in corpus)  # ids from the file, no duplicates
    assert {h["id"]: h["metadata"] for h in hits} == {r.id: r.metadata for r in corpus}  # other fields = metadata


@pytest.fixture(scope="module")
def indexed(db, m3_path, corpus, tmp_path_factory) -> str:
    path = write_jsonl(tmp_path_factory.mktemp("in") / "corpus.jsonl",
                       [{"id": r.id, "text": r.text, **r.metadata} for r in corpus])
    result = index(db, m3_path, path, "docs", "-q")
    assert result.exit_code == 0, result.output
    return "docs"


@pytest.mark.parametrize("mode", ["hybrid", "dense", "sparse"])
def test_each_mode_finds_the_passage_itself(db, m3_path, corpus, indexed, mode):
    target = corpus[2]
    result = search(db, m3_path, target.text, indexed, "--mode", mode, "-k", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"3 hits for {target.text!r} in 'docs' ({mode}) in ")
    assert lines[1].split() == ["rank", "score", "id", "text"]
    assert lines[3].split()[0] == "1" and lines[3].split()[2] == target.id
    assert len(lines) == 6


def test_json_output_and_filter(db, m3_path, corpus, indexed):
    result = search(db, m3_path, corpus[0].text, indexed, "--json", "-k", "20", "--filter", 'metadata["lang"] == "en"')
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["query"] == corpus[0].text and data["mode"] == "hybrid" and data["rerank"] is None
    english = [r.id for r in corpus if r.metadata["lang"] == "en"]
    assert sorted(h["id"] for h in data["hits"]) == sorted(english)
    assert [h["rank"] for h in data["hits"]] == list(range(1, len(english) + 1))
    scores = [h["score"] for h in data["hits"]]
    assert scores == sorted(scores, reverse=True) and data["hits"][0]["id"] == corpus[0].id


def test_rerank_with_a_cross_encoder_and_with_colbert(db, m3_path, cross_encoder_path, corpus, indexed):
    query = "Where do pandas live?"
    result = search(db, m3_path, query, indexed, "--json", "-k", "4", "--rerank", cross_encoder_path)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["hits"]
    want = Reranker(cross_encoder_path, device="cpu").score([(query, h["text"]) for h in hits])
    assert [h["score"] for h in hits] == pytest.approx(want.tolist(), abs=1e-5)
    scores = [h["score"] for h in hits]
    assert all(a >= b for a, b in zip(scores, scores[1:]))  # best first

    table = search(db, m3_path, query, indexed, "-k", "2", "--rerank", "colbert")
    assert table.exit_code == 0, table.output
    assert "(hybrid, reranked by colbert)" in table.stdout.splitlines()[0]


def test_search_never_creates_what_it_cannot_find(db, m3_path, tmp_path, indexed):
    missing_db = tmp_path / "none.db"
    assert_error_line(search(str(missing_db), m3_path, "q", "docs"), str(missing_db), "no such Milvus Lite database")
    assert not missing_db.exists()
    assert_error_line(search(db, m3_path, "q", "nope"), "no collection 'nope'", "bge index")
    from bge_milvus.backend import open_client

    client = open_client(db, "", "")
    try:
        assert not client.has_collection("nope")
    finally:
        client.close()


def test_wrong_models_are_one_line_errors(db, m3_path, dense_path, tmp_path, corpus_jsonl, indexed):
    assert_error_line(search(db, m3_path, "q", indexed, "--rerank", str(tmp_path / "no-reranker")), "no-reranker",
                      "no such model directory")
    fresh_db = tmp_path / "fresh.db"
    result = bge("index", corpus_jsonl, "--collection", "c", "--uri", fresh_db, "--model", dense_path, "--device",
                 "cpu")
    assert_error_line(result, dense_path, "BGE-M3")
    assert not fresh_db.exists()  # nothing was opened, let alone written
    assert bge("search", "q", "--collection", indexed, "--uri", db, "--mode", "fuzzy").exit_code == 2


def test_bad_lines_stop_index_before_the_first_write(db, m3_path, tmp_path, corpus, indexed):
    rows = [{"id": r.id, "text": r.text + " (edited)"} for r in corpus[:3]]
    before = count(db, m3_path, indexed)
    for bad, message in (({"id": "x", "body": "no text"}, ':4: no "text" field'),
                         ({"id": "x", "text": "é" * 40000}, ":4: text longer than Milvus's 65535 bytes")):
        path = write_jsonl(tmp_path / "bad.jsonl", rows + [bad])
        assert_error_line(index(db, m3_path, path, indexed), f"{path}{message}")
        assert count(db, m3_path, indexed) == before
    hits = json.loads(search(db, m3_path, corpus[0].text, indexed, "--json", "-k", "1").stdout)["hits"]
    assert hits[0]["text"] == corpus[0].text  # the three good lines before the bad one were not written either
    assert os.path.exists(db)
