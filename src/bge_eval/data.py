"""Retrieval datasets on disk: BEIR's layout and FlagEmbedding's custom layout, detected automatically.

BEIR (``beir.datasets.data_loader.GenericDataLoader``)::

    corpus.jsonl        {"_id": …, "title": …, "text": …}
    queries.jsonl       {"_id": …, "text": …}
    qrels/<split>.tsv   query-id <TAB> corpus-id <TAB> score   (header row optional)

FlagEmbedding's custom layout (``FlagEmbedding.evaluation.custom``)::

    corpus.jsonl            {"id": …, "title": … (optional), "text": …}
    <split>_queries.jsonl   {"id": …, "text": …}
    <split>_qrels.jsonl     {"qid": …, "docid": …, "relevance": …}

Ids of any JSON type are strings here (``5`` and ``"5"`` name the same document), so integer ids
never meet pytrec_eval, which only takes string keys. A document's text is ``f"{title} {text}".strip()``,
as FlagEmbedding's searcher and mteb join them.

Defined behaviour on imperfect data (each count is kept in `Split` and reported by `bge eval`):
queries without any judgement are skipped (BEIR filters them the same way; FlagEmbedding would stop with a
KeyError); judgements of unknown queries are ignored; judgements of documents missing from the corpus are
kept (they count as relevant documents that no system can find, as in trec_eval). A missing file, a line
that is not JSON, a missing or duplicate id, a non-integer relevance or an empty corpus is a `DatasetError`
naming the file and line.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from bge_core.errors import BgeCoreError

Layout = Literal["beir", "custom"]


class DatasetError(BgeCoreError, ValueError):
    """A dataset file is missing or malformed; the message starts with ``path:line:`` where a line is to blame.

    Example:
        >>> raise DatasetError("data/corpus.jsonl:7: duplicate id '12' (first on line 3)")
    """


@dataclass
class Split:
    """The queries and judgements of one split.

    Attributes:
        name: the split (``"test"``).
        queries: query id → query text, only queries with at least one judgement, in file order.
        qrels: query id → {doc id → relevance}.
        skipped_queries: queries of the queries file without any judgement (left out of the evaluation).
        unknown_query_judgements: judgement rows naming a query the queries file lacks (ignored).
        unknown_doc_judgements: judgement rows naming a document the corpus lacks (kept).
    """

    name: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    skipped_queries: int = 0
    unknown_query_judgements: int = 0
    unknown_doc_judgements: int = 0


@dataclass
class RetrievalDataset:
    """A corpus and the splits asked for.

    Attributes:
        path: the dataset folder.
        layout: ``"beir"`` or ``"custom"``.
        corpus_ids / corpus_texts: the documents in file order (text = title and text joined).
        splits: split name → `Split`.
    """

    path: str
    layout: Layout
    corpus_ids: list[str]
    corpus_texts: list[str]
    splits: dict[str, Split] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.path))


def detect_layout(path: str | os.PathLike[str], split: str = "test") -> Layout:
    """``"beir"`` when the folder has ``queries.jsonl`` or ``qrels/``, ``"custom"`` when it has
    ``<split>_queries.jsonl``; `DatasetError` naming the expected files otherwise.

    Example:
        >>> detect_layout("scifact")
        'beir'
    """
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise DatasetError(f"{folder}: no such dataset folder")
    if os.path.isfile(os.path.join(folder, "queries.jsonl")) or os.path.isdir(os.path.join(folder, "qrels")):
        return "beir"
    if os.path.isfile(os.path.join(folder, f"{split}_queries.jsonl")):
        return "custom"
    raise DatasetError(f"{folder}: neither a BEIR dataset (corpus.jsonl, queries.jsonl, qrels/{split}.tsv) nor "
                       f"FlagEmbedding's custom layout (corpus.jsonl, {split}_queries.jsonl, {split}_qrels.jsonl)")


def read_dataset(path: str | os.PathLike[str], splits: str | list[str] = "test") -> RetrievalDataset:
    """Read a BEIR or FlagEmbedding-custom dataset folder (layout detected from its files).

    Args:
        path: the dataset folder.
        splits: one split name or several (each needs its queries and judgements).

    Raises:
        DatasetError: a file is missing or malformed (file and line named), the corpus is empty, or no
            query of a split has a judgement.

    Example:
        >>> data = read_dataset("scifact", "test")
        >>> len(data.corpus_ids), len(data.splits["test"].queries)
        (5183, 300)
    """
    names = [splits] if isinstance(splits, str) else list(splits)
    if not names:
        raise DatasetError("no split given")
    folder = os.fspath(path)
    layout = detect_layout(folder, names[0])
    id_key = "_id" if layout == "beir" else "id"
    corpus_ids, corpus_texts = _read_corpus(os.path.join(folder, "corpus.jsonl"), id_key)
    dataset = RetrievalDataset(folder, layout, corpus_ids, corpus_texts)
    known_docs = set(corpus_ids)
    beir_queries = _read_queries(os.path.join(folder, "queries.jsonl"), id_key) if layout == "beir" else None
    for name in names:
        if layout == "beir":
            queries, qrels_path = beir_queries, os.path.join(folder, "qrels", f"{name}.tsv")
            rows = _read_tsv_qrels(qrels_path)
        else:
            queries = _read_queries(os.path.join(folder, f"{name}_queries.jsonl"), id_key)
            qrels_path = os.path.join(folder, f"{name}_qrels.jsonl")
            rows = _read_jsonl_qrels(qrels_path)
        dataset.splits[name] = _make_split(name, queries, rows, known_docs, qrels_path)
    return dataset


def _make_split(name: str, queries: dict[str, str], rows: Iterator[tuple[str, str, int, int]],
                known_docs: set[str], qrels_path: str) -> Split:
    qrels: dict[str, dict[str, int]] = {}
    where: dict[tuple[str, str], int] = {}
    unknown_queries = unknown_docs = 0
    for qid, docid, relevance, line in rows:
        if qid not in queries:
            unknown_queries += 1
            continue
        if (qid, docid) in where and qrels[qid][docid] != relevance:
            raise DatasetError(f"{qrels_path}:{line}: query {qid!r} judges document {docid!r} {relevance}, "
                               f"but line {where[qid, docid]} judged it {qrels[qid][docid]}")
        where.setdefault((qid, docid), line)
        unknown_docs += docid not in known_docs
        qrels.setdefault(qid, {})[docid] = relevance
    judged = {qid: text for qid, text in queries.items() if qid in qrels}
    if not judged:
        raise DatasetError(f"{qrels_path}: no query of split {name!r} has a judgement")
    return Split(name, judged, qrels, len(queries) - len(judged), unknown_queries, unknown_docs)


def _json_lines(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such file")
    with open(path, encoding="utf-8-sig") as handle:  # a byte-order mark is not part of the first line
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def as_id(value: Any, where: str, key: str) -> str:
    """An id of any JSON type as a string: strings stay, numbers and the rest are written as JSON.

    Example:
        >>> as_id(12, "corpus.jsonl:3", "_id"), as_id("12", "corpus.jsonl:4", "_id")
        ('12', '12')
    """
    if value is None:
        raise DatasetError(f"{where}: no {key!r}")
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    if not text:
        raise DatasetError(f"{where}: empty {key!r}")
    return text


def _text(row: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "nothing" if value is None else type(value).__name__
        raise DatasetError(f"{where}: {key!r} must be a string, got {got}")
    return value


def _row_id(row: dict[str, Any], id_key: str, where: str) -> str:
    # BEIR files use "_id", FlagEmbedding's "id"; each reader also accepts the other's key.
    other = "id" if id_key == "_id" else "_id"
    return as_id(row.get(id_key, row.get(other)), where, id_key)


def _read_corpus(path: str, id_key: str) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    texts: list[str] = []
    first_line: dict[str, int] = {}
    for number, row in _json_lines(path):
        where = f"{path}:{number}"
        doc_id = _row_id(row, id_key, where)
        if doc_id in first_line:
            raise DatasetError(f"{where}: duplicate id {doc_id!r} (first on line {first_line[doc_id]})")
        first_line[doc_id] = number
        title = _text(row, "title", where, required=False)
        ids.append(doc_id)
        texts.append(f"{title} {_text(row, 'text', where)}".strip())
    if not ids:
        raise DatasetError(f"{path}: the corpus has no documents")
    return ids, texts


def _read_queries(path: str, id_key: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, row in _json_lines(path):
        where = f"{path}:{number}"
        qid = _row_id(row, id_key, where)
        if qid in first_line:
            raise DatasetError(f"{where}: duplicate id {qid!r} (first on line {first_line[qid]})")
        first_line[qid] = number
        queries[qid] = _text(row, "text", where)
    if not queries:
        raise DatasetError(f"{path}: no queries")
    return queries


def _relevance(value: Any, where: str) -> int:
    if isinstance(value, bool) or value is None:
        raise DatasetError(f"{where}: relevance must be an integer, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: relevance must be an integer, got {value!r}") from None
    if number != int(number):
        raise DatasetError(f"{where}: relevance must be an integer, got {value!r}")
    return int(number)


def _read_jsonl_qrels(path: str) -> Iterator[tuple[str, str, int, int]]:
    for number, row in _json_lines(path):
        where = f"{path}:{number}"
        yield (as_id(row.get("qid"), where, "qid"), as_id(row.get("docid"), where, "docid"),
               _relevance(row.get("relevance"), where), number)


def _read_tsv_qrels(path: str) -> Iterator[tuple[str, str, int, int]]:
    """BEIR's ``query-id corpus-id score`` rows (tab-separated, header optional); TREC's four-column
    ``qid iter docid rel`` rows are read too."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such file")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for number, cells in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if len(cells) == 1:  # space-separated TREC qrels
                cells = cells[0].split()
            if not cells or not any(c.strip() for c in cells):
                continue
            cells = [c.strip() for c in cells]
            if len(cells) == 4:
                cells = [cells[0], cells[2], cells[3]]
            where = f"{path}:{number}"
            if len(cells) != 3:
                raise DatasetError(f"{where}: expected 3 tab-separated columns (query-id, corpus-id, score), "
                                   f"got {len(cells)}")
            if number == 1 and not _is_number(cells[2]):  # the header row
                continue
            if not cells[0] or not cells[1]:
                raise DatasetError(f"{where}: empty query or corpus id")
            yield cells[0], cells[1], _relevance(cells[2], where), number


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
