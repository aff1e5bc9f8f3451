"""One evaluation: encode the corpus once, search each mode, rerank, score every run, write the reports.

Outputs follow FlagEmbedding's evaluation package (``FlagEmbedding/abc/evaluation/evaluator.py``):
metric keys ``ndcg_at_k, map_at_k, recall_at_k, precision_at_k, mrr_at_k``; the JSON nests
model → reranker (``NoReranker`` or the reranker's folder name) → split → metrics, with the retrieval
mode as one more level after the model (``results[model][mode]`` is exactly one FlagEmbedding
``eval_results`` dict); the Markdown file has one ``## metric`` table per metric with the columns
``| Model | Reranker | Mode | average | split… |``, values ×100 to three decimals, the best of a column
in bold. Values are not rounded (FlagEmbedding rounds to five decimals).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bge_core import Embedder, Reranker
from bge_eval.data import RetrievalDataset
from bge_eval.metrics import evaluate_run, ranked
from bge_eval.search import DEFAULT_WEIGHTS, MODES, ExactSearch, Run, encode, milvus_search, parts_for

logger = logging.getLogger(__name__)

NO_RERANKER = "NoReranker"
DEFAULT_K = (1, 3, 5, 10, 100)
#: The Markdown tables written by default (FlagEmbedding's `eval_metrics` default).
DEFAULT_TABLE_METRICS = ("ndcg_at_10", "recall_at_10")


def display_name(model: str) -> str:
    """The name FlagEmbedding reports a model by: its path's last part.

    Example:
        >>> display_name("BAAI/bge-m3"), display_name("/models/my-bge/")
        ('bge-m3', 'my-bge')
    """
    return os.path.basename(os.path.normpath(str(model)))


@dataclass
class EvalResult:
    """Runs and metrics of one evaluation, keyed by (mode, reranker name, split).

    Attributes:
        model / reranker: display names (reranker is None without a rerank stage).
        k_values: the cutoffs of every metric.
        runs: ``{(mode, reranker, split): {qid: {docid: score}}}`` (reranker is ``"NoReranker"`` or the name).
        metrics: same keys → ``{"ndcg_at_10": …, …}``.
        skipped_queries: split → queries left out because they have no judgement.
        seconds: wall time of each stage (``encode corpus``, ``encode queries``, ``search``, ``rerank``,
            ``metrics``), summed over modes and splits.
    """

    model: str
    reranker: str | None
    k_values: list[int]
    runs: dict[tuple[str, str, str], Run] = field(default_factory=dict)
    metrics: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=dict)
    skipped_queries: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def timed(self, stage: str, started: float) -> None:
        """Add the time since `started` (a `time.perf_counter()` value) to `stage`."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started

    def to_json(self) -> dict[str, Any]:
        """``{model: {mode: {reranker: {split: {metric: value}}}}}``.

        Example:
            >>> result.to_json()["bge-m3"]["dense"]["NoReranker"]["test"]["ndcg_at_10"]
        """
        out: dict[str, Any] = {}
        for (mode, reranker, split), values in self.metrics.items():
            out.setdefault(mode, {}).setdefault(reranker, {})[split] = dict(values)
        return {self.model: out}

    def to_markdown(self, metrics: Sequence[str] = DEFAULT_TABLE_METRICS) -> str:
        """FlagEmbedding's Markdown layout with a Mode column: one table per metric, rows (reranker, mode).

        Example:
            >>> print(result.to_markdown(["ndcg_at_10"]))
            ## ndcg_at_10
            <BLANKLINE>
            | Model | Reranker | Mode | average | test |
            ...
        """
        splits = sorted({split for _, _, split in self.metrics})
        rows = list(dict.fromkeys((reranker, mode) for mode, reranker, _ in self.metrics))
        lines: list[str] = []
        for metric in metrics:
            table = {row: [self.metrics.get((row[1], row[0], s), {}).get(metric) for s in splits] for row in rows}
            for row, values in table.items():
                known = [v for v in values if v is not None]
                table[row] = [float(np.mean(known)) if len(known) == len(values) and known else None, *values]
            columns = ["average", *splits]
            best = [max((table[r][c] for r in rows if table[r][c] is not None), default=None)
                    for c in range(len(columns))]
            lines += [f"## {metric}", "", f"| Model | Reranker | Mode | {' | '.join(columns)} |",
                      f"| :---- | :---- | :---- | {' | '.join(':---:' for _ in columns)} |"]
            for row in rows:
                cells = []
                for c, value in enumerate(table[row]):
                    if value is None:
                        cells.append("-")
                    else:
                        cells.append(f"**{value * 100:.3f}**" if value == best[c] else f"{value * 100:.3f}")
                lines.append(f"| {self.model} | {row[0]} | {row[1]} | {' | '.join(cells)} |")
            lines.append("")
        return "\n".join(lines)

    def run_files(self, path: str) -> dict[tuple[str, str, str], str]:
        """Where `write_runs` puts each run: `path` itself for one run, else ``stem.mode.reranker.split.ext``.

        Example:
            >>> result.run_files("run.trec")
            {('dense', 'NoReranker', 'test'): 'run.trec'}
        """
        if len(self.runs) == 1:
            return {next(iter(self.runs)): path}
        stem, ext = os.path.splitext(path)
        return {key: f"{stem}.{'.'.join(key)}{ext or '.trec'}" for key in self.runs}

    def write_runs(self, path: str) -> list[str]:
        """Write TREC run files (``qid Q0 docid rank score tag``, ranks in pytrec_eval's order); returns the paths.

        Example:
            >>> result.write_runs("run.trec")
            ['run.trec']
        """
        written = []
        for key, target in self.run_files(path).items():
            write_trec_run(self.runs[key], target, self.run_tag(key))
            written.append(target)
        return written

    def run_tag(self, key: tuple[str, str, str]) -> str:
        """The TREC run tag of a run: ``model_mode_reranker`` without spaces.

        Example:
            >>> result.run_tag(("dense", "NoReranker", "test"))
            'bge-m3_dense_NoReranker'
        """
        return "_".join("_".join(part.split()) for part in (self.model, key[0], key[1]))


def write_trec_run(run: Run, path: str, tag: str = "bge") -> None:
    """A standard TREC run file: one ``qid Q0 docid rank score tag`` line per hit, best first.

    Scores are written with `repr`, so reading the file back gives the same floats.

    Example:
        >>> write_trec_run({"q1": {"d1": 0.9}}, "run.trec", "bge-m3_dense")
    """
    with open(path, "w", encoding="utf-8") as handle:
        for qid, hits in run.items():
            for rank, (docid, score) in enumerate(ranked(hits), start=1):
                handle.write(f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n")


def read_trec_run(path: str) -> Run:
    """Read a TREC run file back into ``{qid: {docid: score}}``.

    Example:
        >>> read_trec_run("run.trec")["q1"]
        {'d1': 0.9}
    """
    run: Run = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                qid, _, docid, _, score, _ = line.split()
                run.setdefault(qid, {})[docid] = float(score)
    return run


def rerank_run(reranker: Reranker, run: Run, queries: dict[str, str], doc_text: dict[str, str], top_k: int, *,
               show_progress: bool = False) -> Run:
    """Rescore each query's best `top_k` hits with a cross-encoder / LLM reranker (FlagEmbedding's
    `EvalReranker`: the reranked run holds only those hits, with the reranker's scores).

    Example:
        >>> rerank_run(Reranker("BAAI/bge-reranker-v2-m3"), run, queries, doc_text, top_k=100)
    """
    keys: list[tuple[str, str]] = []
    for qid, hits in run.items():
        keys += [(qid, docid) for docid, _ in ranked(hits)[: max(0, top_k)]]
    out: Run = {qid: {} for qid in run}
    if not keys:
        return out
    scores = reranker.score([(queries[q], doc_text[d]) for q, d in keys], show_progress=show_progress)
    if scores.ndim == 2:  # layerwise rerankers: the last cutoff layer decides
        scores = scores[-1]
    for (qid, docid), score in zip(keys, scores):
        out[qid][docid] = float(score)
    return out


def evaluate(
    dataset: RetrievalDataset,
    embedder: Embedder,
    *,
    modes: Sequence[str] = ("dense",),
    reranker: Reranker | None = None,
    k_values: Sequence[int] = DEFAULT_K,
    top_k: int = 1000,
    rerank_top_k: int = 100,
    ignore_identical_ids: bool = False,
    backend: str = "exact",
    uri: str | None = None,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    max_length: int | None = None,
    show_progress: bool = False,
) -> EvalResult:
    """Evaluate `embedder` (and optionally `reranker`) on every split of `dataset` in each of `modes`.

    The corpus is encoded once, with every output the modes need from one forward; the queries of all
    splits are encoded once with the model's query instruction.

    Args:
        modes: some of ``dense``, ``sparse``, ``colbert``, ``hybrid`` (the last three need BGE-M3).
        k_values: metric cutoffs.
        top_k: hits kept per query; rerank_top_k: hits the reranker rescores.
        ignore_identical_ids: drop hits whose doc id equals the query id (ArguAna / Quora style sets).
        backend: ``"exact"`` (this process, the engine's device) or ``"milvus"`` (`uri`).
        weights: hybrid weights (dense, sparse, colbert).

    Example:
        >>> from bge_eval import read_dataset, evaluate
        >>> result = evaluate(read_dataset("scifact"), Embedder("BAAI/bge-m3"), modes=["dense", "hybrid"])
        >>> result.metrics["dense", "NoReranker", "test"]["ndcg_at_10"]
    """
    modes = list(dict.fromkeys(modes))
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"mode must be some of {MODES}, got {modes}")
    if embedder.family != "m3" and modes != ["dense"]:
        raise ValueError(f"{embedder.name}: modes {modes} need a BGE-M3 model (sparse and ColBERT heads); "
                         f"this is a {embedder.family} model: use --mode dense")
    if len(weights) != 3 or any(w < 0 for w in weights) or not sum(weights):
        raise ValueError(f"hybrid weights must be three non-negative numbers (dense, sparse, colbert), got {weights}")
    k_values = sorted({int(k) for k in k_values})
    if not k_values or k_values[0] < 1:
        raise ValueError(f"k values must be positive integers, got {k_values}")
    result = EvalResult(display_name(embedder.name), None if reranker is None else display_name(reranker.name),
                        k_values)
    # Splits may reuse a query id for another text (FlagEmbedding's custom layout has one queries file per
    # split): such splits go to separate groups, so every query is searched with its own split's text.
    groups: list[dict[str, str]] = []
    group_of: dict[str, int] = {}
    for split in dataset.splits.values():
        result.skipped_queries[split.name] = split.skipped_queries
        fits = (i for i, g in enumerate(groups) if all(g.get(q, text) == text for q, text in split.queries.items()))
        index_of_group = next(fits, None)
        if index_of_group is None:
            groups.append({})
            index_of_group = len(groups) - 1
        groups[index_of_group].update(split.queries)
        group_of[split.name] = index_of_group
    if backend == "exact":
        parts = parts_for(modes, weights)
        started = time.perf_counter()
        docs = encode(embedder, dataset.corpus_texts, queries=False, parts=parts, max_length=max_length,
                      show_progress=show_progress)
        result.timed("encode corpus", started)
        started = time.perf_counter()
        encoded = [encode(embedder, list(group.values()), queries=True, parts=parts, max_length=max_length,
                          show_progress=show_progress) for group in groups]
        result.timed("encode queries", started)
        device = embedder.device[0] if isinstance(embedder.device, list) else embedder.device
        index = ExactSearch(dataset.corpus_ids, docs, device=device, weights=weights)
        search = lambda mode, g: index.search(mode, encoded[g], list(groups[g]), top_k,  # noqa: E731
                                              ignore_identical_ids=ignore_identical_ids, show_progress=show_progress)
    elif backend == "milvus":
        if embedder.family != "m3":
            raise ValueError(f"{embedder.name}: the milvus backend needs a BGE-M3 model (dense + sparse collection)")
        search = lambda mode, g: milvus_search(  # noqa: E731
            embedder, dataset.corpus_ids, dataset.corpus_texts, groups[g], mode, top_k, uri=uri or "./bge_eval.db",
            weights=weights, ignore_identical_ids=ignore_identical_ids, show_progress=show_progress,
            max_length=max_length)
    else:
        raise ValueError(f"backend must be 'exact' or 'milvus', got {backend!r}")
    doc_text = dict(zip(dataset.corpus_ids, dataset.corpus_texts))
    for mode in modes:
        for g, group in enumerate(groups):
            started = time.perf_counter()
            run = search(mode, g)
            result.timed("search", started)
            stages = [(NO_RERANKER, run)]
            if reranker is not None:
                started = time.perf_counter()
                stages.append((result.reranker, rerank_run(reranker, run, group, doc_text, rerank_top_k,
                                                           show_progress=show_progress)))
                result.timed("rerank", started)
            started = time.perf_counter()
            for name, stage_run in stages:
                for split in dataset.splits.values():
                    if group_of[split.name] != g:
                        continue
                    split_run = {qid: stage_run[qid] for qid in split.queries}
                    key = (mode, name, split.name)
                    result.runs[key] = split_run
                    result.metrics[key] = evaluate_run(split.qrels, split_run, k_values)
            result.timed("metrics", started)
    return result


def write_json(result: EvalResult, path: str) -> None:
    """Write `EvalResult.to_json` (indented, as FlagEmbedding's eval_results.json).

    Example:
        >>> write_json(result, "results.json")
    """
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result.to_json(), handle, indent=4, ensure_ascii=False)
        handle.write("\n")
