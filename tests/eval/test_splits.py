"""Several splits in one run: a query id that two splits use for different texts (FlagEmbedding's custom layout
has one queries file per split) is searched with each split's own text, so every split's run and metrics equal
those of evaluating that split alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from bge_core import Embedder
from bge_eval import evaluate, read_dataset
from tests.eval.conftest import write_jsonl

K = [1, 3]


def write_two_splits(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "corpus.jsonl", [
        {"id": "1", "title": "", "text": "Pandas eat bamboo in the forests of Sichuan."},
        {"id": "2", "title": "", "text": "Paris is the capital of France."},
        {"id": "3", "title": "", "text": "Vector databases answer similarity search queries."},
        {"id": "4", "title": "", "text": "The quick brown fox jumps over the lazy dog."},
    ])
    # Query "q" means something else in each split; "shared" has the same text in both.
    write_jsonl(folder / "dev_queries.jsonl", [{"id": "q", "text": "what do pandas eat"},
                                               {"id": "shared", "text": "similarity search"}])
    write_jsonl(folder / "test_queries.jsonl", [{"id": "q", "text": "capital of France"},
                                                {"id": "shared", "text": "similarity search"}])
    write_jsonl(folder / "dev_qrels.jsonl", [{"qid": "q", "docid": "1", "relevance": 1},
                                             {"qid": "shared", "docid": "3", "relevance": 1}])
    write_jsonl(folder / "test_qrels.jsonl", [{"qid": "q", "docid": "2", "relevance": 1},
                                              {"qid": "shared", "docid": "3", "relevance": 1}])
    return folder


@pytest.fixture(scope="module")
def embedder(dense_path) -> Embedder:
    return Embedder(dense_path, device="cpu")


def test_each_split_is_searched_with_its_own_query_texts(tmp_path, embedder):
    folder = write_two_splits(tmp_path / "two-splits")
    together = evaluate(read_dataset(folder, ["dev", "test"]), embedder, k_values=K)
    for split in ("dev", "test"):
        alone = evaluate(read_dataset(folder, [split]), embedder, k_values=K)
        key = ("dense", "NoReranker", split)
        assert together.runs[key] == alone.runs[key], split
        assert together.metrics[key] == alone.metrics[key], split
    # The clash is real: the two texts of "q" rank the corpus differently.
    dev, test = (together.runs["dense", "NoReranker", s]["q"] for s in ("dev", "test"))
    assert dev != test
