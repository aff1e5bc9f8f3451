"""bge_eval: retrieval evaluation on the fast engine (BEIR / FlagEmbedding custom data, mteb model class).

Metrics equal pytrec_eval's (nDCG, MAP, recall, precision) and MRR@k follows pytrec_eval's tie order;
search is exact on the engine's device (dense, sparse, ColBERT, hybrid) or goes through Milvus.

Example:
    >>> from bge_core import Embedder
    >>> from bge_eval import evaluate, read_dataset
    >>> result = evaluate(read_dataset("scifact", "test"), Embedder("BAAI/bge-m3"), modes=["dense", "hybrid"])
    >>> result.metrics["hybrid", "NoReranker", "test"]["ndcg_at_10"]
    >>> print(result.to_markdown())
"""

from __future__ import annotations

from typing import Any

from bge_eval.data import DatasetError, RetrievalDataset, Split, detect_layout, read_dataset
from bge_eval.metrics import evaluate_run, mrr_at_k, per_query_metrics, ranked
from bge_eval.runner import EvalResult, evaluate, read_trec_run, rerank_run, write_json, write_trec_run
from bge_eval.search import DEFAULT_WEIGHTS, MODES, ExactSearch

__all__ = [
    "DEFAULT_WEIGHTS",
    "MODES",
    "BGEMtebModel",
    "DatasetError",
    "EvalResult",
    "ExactSearch",
    "RetrievalDataset",
    "Split",
    "detect_layout",
    "evaluate",
    "evaluate_run",
    "mrr_at_k",
    "per_query_metrics",
    "ranked",
    "read_dataset",
    "read_trec_run",
    "rerank_run",
    "write_json",
    "write_trec_run",
]


def __getattr__(name: str) -> Any:
    # mteb is heavy and optional: import it only when its model class is asked for.
    if name == "BGEMtebModel":
        from bge_eval.mteb_model import BGEMtebModel

        return BGEMtebModel
    raise AttributeError(name)
