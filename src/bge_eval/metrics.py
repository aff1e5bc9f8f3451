"""Retrieval metrics with FlagEmbedding's names: nDCG, MAP, recall and precision from pytrec_eval, MRR@k by hand.

pytrec_eval (trec_eval) ranks a query's documents by score, descending, and breaks ties by doc id,
descending, whatever order the run lists them in; scores are compared as C floats. MRR@k has no cutoff
in trec_eval, so it is computed here with the same order (`ranked`), as mteb does since its fix #5092
(FlagEmbedding's and BEIR's MRR sort by score only, so on ties they can disagree with their own nDCG).

Means are taken over the queries pytrec_eval scores: those in both the run and the judgements. Every
judged query has a run entry here (an empty one if nothing was found, which scores 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

METRICS = ("ndcg", "map", "recall", "precision", "mrr")
#: Our metric → pytrec_eval's measure family (requested as ``"ndcg_cut.1,10"``, returned as ``ndcg_cut_10``).
TREC_MEASURES = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall", "precision": "P"}


def ranked(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """A query's hits in pytrec_eval's order: score (as float32) descending, then doc id descending.

    Example:
        >>> ranked({"d1": 0.5, "d2": 0.5, "d3": 0.9})
        [('d3', 0.9), ('d2', 0.5), ('d1', 0.5)]
    """
    return sorted(scores.items(), key=lambda item: (float(np.float32(item[1])), item[0]), reverse=True)


def first_relevant_rank(scores: Mapping[str, float], relevant: set[str]) -> int | None:
    """1-based rank of the best-ranked relevant hit in `ranked` order, without sorting every hit.

    Example:
        >>> first_relevant_rank({"d1": 0.5, "d2": 0.5, "d3": 0.9}, {"d1"})
        3
    """
    found = [(doc, scores[doc]) for doc in relevant if doc in scores]
    if not found:
        return None
    values = np.fromiter(scores.values(), dtype=np.float32, count=len(scores))
    docs: list[str] | None = None
    best = None
    for doc, score in found:
        tied = values == np.float32(score)
        rank = int((values > np.float32(score)).sum()) + 1
        if int(tied.sum()) > 1:  # equal scores rank by doc id, descending
            docs = list(scores) if docs is None else docs
            rank += sum(1 for i in np.flatnonzero(tied) if docs[i] > doc)
        best = rank if best is None else min(best, rank)
    return best


def mrr_at_k(qrels: Qrels, run: Run, k_values: Sequence[int]) -> dict[int, dict[str, float]]:
    """Reciprocal rank of the first relevant (relevance > 0) hit within the top k, per query.

    Only queries in both `run` and `qrels` are scored (pytrec_eval's set).

    Example:
        >>> mrr_at_k({"q": {"d1": 1}}, {"q": {"d1": 0.5, "d2": 0.5}}, [1, 2])
        {1: {'q': 0.0}, 2: {'q': 0.5}}
    """
    out: dict[int, dict[str, float]] = {k: {} for k in k_values}
    for qid, scores in run.items():
        if qid not in qrels:
            continue
        first = first_relevant_rank(scores, {doc for doc, rel in qrels[qid].items() if rel > 0})
        for k in k_values:
            out[k][qid] = 1.0 / first if first is not None and first <= k else 0.0
    return out


def per_query_metrics(qrels: Qrels, run: Run, k_values: Sequence[int]) -> dict[str, dict[str, float]]:
    """``{qid: {"ndcg_at_10": …, "map_at_10": …, "recall_at_10": …, "precision_at_10": …, "mrr_at_10": …}}``.

    Example:
        >>> per_query_metrics({"q": {"d1": 1}}, {"q": {"d1": 0.9}}, [1])["q"]["ndcg_at_1"]
        1.0
    """
    import pytrec_eval

    cutoffs = ",".join(str(k) for k in k_values)
    measures = {f"{family}.{cutoffs}" for family in TREC_MEASURES.values()}
    # pytrec_eval wants plain dicts of str → float / int.
    trec_run = {qid: {doc: float(s) for doc, s in hits.items()} for qid, hits in run.items()}
    trec_qrels = {qid: {doc: int(r) for doc, r in rels.items()} for qid, rels in qrels.items()}
    scores = pytrec_eval.RelevanceEvaluator(trec_qrels, measures).evaluate(trec_run)
    mrr = mrr_at_k(qrels, run, k_values)
    out: dict[str, dict[str, float]] = {}
    for qid, values in scores.items():
        row = {}
        for name, family in TREC_MEASURES.items():
            for k in k_values:
                row[f"{name}_at_{k}"] = float(values[f"{family}_{k}"])
        for k in k_values:
            row[f"mrr_at_{k}"] = mrr[k][qid]
        out[qid] = row
    return out


def metric_names(k_values: Iterable[int]) -> list[str]:
    """Keys in FlagEmbedding's order: all ndcg, then map, recall, precision, mrr.

    Example:
        >>> metric_names([1, 10])[:3]
        ['ndcg_at_1', 'ndcg_at_10', 'map_at_1']
    """
    ks = list(k_values)
    return [f"{name}_at_{k}" for name in METRICS for k in ks]


def evaluate_run(qrels: Qrels, run: Run, k_values: Sequence[int]) -> dict[str, float]:
    """Mean of each metric over the queries in both `run` and `qrels` (NaN-free: 0 when there are none).

    Example:
        >>> evaluate_run({"q": {"d1": 1}}, {"q": {"d2": 0.9, "d1": 0.1}}, [1, 10])["mrr_at_10"]
        0.5
    """
    rows = per_query_metrics(qrels, run, k_values)
    names = metric_names(k_values)
    if not rows:
        return dict.fromkeys(names, 0.0)
    return {name: sum(row[name] for row in rows.values()) / len(rows) for name in names}
