"""Bad datasets: one clear error naming the file (and line), or the documented result; never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bge_eval import DatasetError, read_dataset
from tests.cli.conftest import assert_error_line
from tests.eval.conftest import bge, write_beir, write_custom


@pytest.fixture
def beir(tmp_path) -> Path:
    return write_beir(tmp_path / "beir")


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


def lines_of(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_missing_corpus_names_the_file(beir, dense_path):
    (beir / "corpus.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"corpus\.jsonl: no such file"):
        read_dataset(beir)
    assert_error_line(bge("eval", beir, "--model", dense_path), "corpus.jsonl", "no such file")


def test_missing_qrels_split_names_the_file(beir, dense_path):
    assert_error_line(bge("eval", beir, "--model", dense_path, "--split", "dev"), "qrels/dev.tsv", "no such file")


def test_unknown_layout_lists_both_layouts(tmp_path, dense_path):
    (tmp_path / "empty").mkdir()
    assert_error_line(bge("eval", tmp_path / "empty", "--model", dense_path), "neither a BEIR dataset",
                      "test_queries.jsonl")
    assert_error_line(bge("eval", tmp_path / "nowhere", "--model", dense_path), "no such dataset folder")


def test_bad_json_names_file_and_line(beir, dense_path):
    corpus = beir / "corpus.jsonl"
    append(corpus, '{"_id": "broken", "text": \n')
    line = lines_of(corpus)
    assert_error_line(bge("eval", beir, "--model", dense_path), f"corpus.jsonl:{line}:", "not valid JSON")


def test_duplicate_ids_name_both_lines(beir):
    append(beir / "corpus.jsonl", '{"_id": "7", "text": "again"}\n')  # 7 was an integer id on line 8
    with pytest.raises(DatasetError, match=r"corpus\.jsonl:31: duplicate id '7' \(first on line 8\)"):
        read_dataset(beir)
    append(beir / "queries.jsonl", '{"_id": "q5", "text": "again"}\n')
    (beir / "corpus.jsonl").write_text('{"_id": 1, "text": "one"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"queries\.jsonl:9: duplicate id 'q5' \(first on line 5\)"):
        read_dataset(beir)


def test_empty_corpus_is_an_error(beir, dense_path):
    (beir / "corpus.jsonl").write_text("\n", encoding="utf-8")
    assert_error_line(bge("eval", beir, "--model", dense_path), "corpus.jsonl", "no documents")


def test_missing_text_and_id_fields_name_the_line(beir):
    append(beir / "corpus.jsonl", '{"_id": "no-text"}\n')
    with pytest.raises(DatasetError, match=r"corpus\.jsonl:31: 'text' must be a string, got nothing"):
        read_dataset(beir)
    (beir / "corpus.jsonl").write_text('{"text": "no id"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"corpus\.jsonl:1: no '_id'"):
        read_dataset(beir)
    (beir / "corpus.jsonl").write_text('["not", "an", "object"]\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"corpus\.jsonl:1: expected a JSON object, got list"):
        read_dataset(beir)


def test_bad_relevance_and_columns_name_the_line(beir):
    qrels = beir / "qrels" / "test.tsv"
    append(qrels, "1\t2\tvery\n")
    with pytest.raises(DatasetError, match=rf"test\.tsv:{lines_of(qrels)}: relevance must be an integer"):
        read_dataset(beir)
    qrels.write_text("query-id\tcorpus-id\tscore\n1\t2\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"test\.tsv:2: expected 3 tab-separated columns"):
        read_dataset(beir)
    qrels.write_text("1\t2\t1\n1\t2\t2\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"test\.tsv:2: query '1' judges document '2' 2, but line 1 judged it 1"):
        read_dataset(beir)


def test_custom_layout_errors_name_the_line(tmp_path):
    custom = write_custom(tmp_path / "custom")
    append(custom / "test_qrels.jsonl", '{"qid": "1", "docid": "2", "relevance": 1.5}\n')
    with pytest.raises(DatasetError, match=r"test_qrels\.jsonl:17: relevance must be an integer, got 1\.5"):
        read_dataset(custom)
    (custom / "test_qrels.jsonl").write_text('{"qid": "1", "relevance": 1}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"test_qrels\.jsonl:1: no 'docid'"):
        read_dataset(custom)


def test_imperfect_judgements_are_counted_not_fatal(beir, dense_path):
    append(beir / "qrels" / "test.tsv", "nobody\t2\t1\n1\tnot-in-corpus\t1\n")
    split = read_dataset(beir).splits["test"]
    assert (split.skipped_queries, split.unknown_query_judgements, split.unknown_doc_judgements) == (1, 1, 1)
    assert "nobody" not in split.qrels and split.qrels["1"]["not-in-corpus"] == 1
    done = bge("eval", beir, "--model", dense_path, "-q")
    assert done.exit_code == 0, done.output
    assert "skipped 1 queries without judgements" in done.stderr
    assert "ignored 1 judgements of unknown queries" in done.stderr
    assert "1 judgements name documents missing from the corpus" in done.stderr


def test_a_split_without_judged_queries_is_an_error(beir):
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nnobody\t1\t1\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"test\.tsv: no query of split 'test' has a judgement"):
        read_dataset(beir)


def test_bad_options_are_one_line_errors(beir, dense_path, tmp_path):
    assert bge("eval", beir, "--model", dense_path, "--k", "0,10").exit_code == 2
    assert bge("eval", beir, "--model", dense_path, "--weights", "1,2").exit_code == 2
    assert_error_line(bge("eval", beir, "--model", dense_path, "--mode", "sparse", "-q"), "need a BGE-M3 model")
    assert_error_line(bge("eval", beir, "--model", dense_path, "-q", "-o", tmp_path / "missing" / "r.json"),
                      "output folder", "does not exist")
    assert_error_line(bge("eval", beir, "--model", dense_path, "-q", "--markdown", tmp_path / "r.md",
                          "--markdown-metrics", "ndcg_at_7"), "unknown metric", "ndcg_at_7")


def test_the_same_folder_read_twice_is_stable(beir):
    copy = beir.parent / "copy"
    shutil.copytree(beir, copy)
    a, b = read_dataset(beir), read_dataset(copy)
    assert (a.corpus_ids, a.corpus_texts, a.splits["test"]) == (b.corpus_ids, b.corpus_texts, b.splits["test"])
    assert a.corpus_ids[:2] == ["0", "1"] and a.corpus_texts[1].startswith("Title 1 ")
