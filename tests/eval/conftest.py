"""A small retrieval dataset written by the tests, in BEIR's and FlagEmbedding's custom layouts.

30 documents (integer and string ids, some with titles, three exact duplicates of other documents so
scores tie), 8 queries (integer and string ids, one without any judgement, one whose id equals a
document's id), graded judgements (0, 1, 2), including relevant documents that tie with irrelevant ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bge_cli.main import main
from tests.fixtures.checkpoints import CORPUS

QUERY_INSTRUCTION = "Represent this query for searching passages: "


def _docs() -> list[dict]:
    docs: list[dict] = []
    for i, text in enumerate(CORPUS):  # 25 texts: ids 0..12 as JSON integers, then strings
        doc = {"_id": i if i < 13 else f"doc-{i}", "text": text}
        if i % 4 == 1:
            doc["title"] = f"Title {i}"
        docs.append(doc)
    # Exact duplicates: the same text gives the same vectors, so their scores tie.
    docs += [
        {"_id": "dup-3", "text": CORPUS[3]},
        {"_id": "dup-2", "text": CORPUS[2]},
        {"_id": 100, "text": CORPUS[7]},
        {"_id": "zz-extra", "title": "Bamboo", "text": "Pandas and bamboo forests in Sichuan."},
        {"_id": "extra-b", "text": "Vector search engines answer similarity queries quickly."},
    ]
    return docs


QUERIES = [
    {"_id": 1, "text": "what do pandas eat?"},
    {"_id": 2, "text": "vector database for similarity search"},
    {"_id": 3, "text": "capital of France"},  # also a document id: --ignore-identical-ids drops doc 3
    {"_id": 4, "text": "hybrid dense and sparse retrieval"},
    {"_id": "q5", "text": "大熊猫吃什么"},
    {"_id": "q6", "text": "quick brown fox"},
    {"_id": "q7", "text": "rerankers score query passage pairs"},
    {"_id": "q8-unjudged", "text": "a query nobody judged"},
]

QRELS = [  # (query id, doc id, relevance)
    (1, 2, 2), (1, "dup-2", 1), (1, "zz-extra", 1), (1, 1, 0),
    (2, 3, 1), (2, "extra-b", 2),  # doc 3 ties with dup-3, which is not judged
    (3, 7, 2), (3, 3, 1),
    (4, 4, 2), (4, 5, 1),
    ("q5", "doc-13", 2), ("q5", "doc-14", 1),
    ("q6", 8, 1), ("q6", "doc-23", 0),
    ("q7", 6, 2), ("q7", 100, 1),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_beir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "corpus.jsonl", _docs())
    write_jsonl(folder / "queries.jsonl", QUERIES)
    (folder / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{r}" for q, d, r in QRELS]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_custom(folder: Path, *, string_ids: bool = True, unjudged: bool = False) -> Path:
    """FlagEmbedding's custom layout. Its own runner needs string ids and judged queries only."""
    def key(value):
        return str(value) if string_ids else value

    folder.mkdir(parents=True, exist_ok=True)
    # Every row has a title ("" where none): FlagEmbedding's loader (datasets) fills a title missing from
    # some rows with None and its searcher then embeds "None <text>".
    write_jsonl(folder / "corpus.jsonl", [
        {"id": key(d["_id"]), "title": d.get("title", ""), "text": d["text"]} for d in _docs()])
    queries = [q for q in QUERIES if unjudged or q["_id"] != "q8-unjudged"]
    write_jsonl(folder / "test_queries.jsonl", [{"id": key(q["_id"]), "text": q["text"]} for q in queries])
    write_jsonl(folder / "test_qrels.jsonl",
                [{"qid": key(q), "docid": key(d), "relevance": r} for q, d, r in QRELS])
    return folder


@pytest.fixture(scope="session")
def beir_dir(tmp_path_factory) -> Path:
    return write_beir(tmp_path_factory.mktemp("beir") / "tiny-beir")


@pytest.fixture(scope="session")
def custom_dir(tmp_path_factory) -> Path:
    return write_custom(tmp_path_factory.mktemp("custom") / "tiny-custom")


def bge(*args) -> Result:
    """Run `bge ARGS…` in this process (the tiny models stay loaded between tests)."""
    return CliRunner().invoke(main, [str(a) for a in args])
