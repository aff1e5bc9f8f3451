"""Exact top-k search over a whole corpus on the engine's device, in four modes, and the same through Milvus.

Scores are the ones `bge_core` defines, computed for every (query, document) pair:

- ``dense``: inner product of the (normalised) dense vectors; one matrix product per chunk.
- ``sparse``: `bge_core.lexical_matching_score` (sum of weight products over shared tokens), as a
  CSR × CSRᵀ product (scipy, float32, on the CPU) per chunk of documents.
- ``colbert``: `bge_core.colbert_score` (mean over query vectors of the best inner product with a
  document vector; 0 for an empty side), over padded chunks of documents: exact, full corpus, no
  candidate pre-selection. All documents' ColBERT vectors are kept in memory, so this mode suits
  corpora of up to some hundred thousand passages.
- ``hybrid``: FlagEmbedding's weighted sum ``(w_d·dense + w_s·sparse + w_c·colbert) / (w_d + w_s + w_c)``
  (``BGEM3FlagModel.compute_score``'s ``colbert+sparse+dense``, `bge_core.combine_scores`), default
  weights ``(1, 0.3, 1)`` as BGE-M3's own unified score; a zero weight skips that part.

Top-k is exact, ties included: the corpus is held in doc-id-descending order and candidates are merged
with a stable sort, so equal scores keep the document with the larger id first, as pytrec_eval ranks them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.sparse import csr_array
from tqdm.auto import tqdm

from bge_core import Embedder
from bge_core.sparse import to_csr

MODES = ("dense", "sparse", "colbert", "hybrid")
#: dense, sparse, colbert weights of the hybrid mode (BGE-M3's unified score: 1, 0.3, 1).
DEFAULT_WEIGHTS = (1.0, 0.3, 1.0)
#: Score-matrix elements computed at once (float32: 128 MiB).
SCORE_BUDGET = 1 << 25

Run = dict[str, dict[str, float]]


def parts_for(modes: Sequence[str], weights: Sequence[float] = DEFAULT_WEIGHTS) -> set[str]:
    """The encoder outputs `modes` need (``{"dense", "sparse", "colbert"}`` subsets).

    Example:
        >>> sorted(parts_for(["hybrid"], (1.0, 0.3, 0.0)))
        ['dense', 'sparse']
    """
    need: set[str] = set()
    for mode in modes:
        if mode == "hybrid":
            need |= {part for part, w in zip(("dense", "sparse", "colbert"), weights) if w}
        else:
            need.add(mode)
    return need


@dataclass
class Encoded:
    """Encoder outputs of a list of texts; parts not asked for are None."""

    dense: np.ndarray | None = None
    sparse: csr_array | None = None
    colbert: list[np.ndarray] | None = None


def encode(embedder: Embedder, texts: list[str], *, queries: bool, parts: set[str], max_length: int | None = None,
           show_progress: bool = False) -> Encoded:
    """Encode queries (with the model's query instruction) or documents, all `parts` from one forward.

    Example:
        >>> encode(Embedder("BAAI/bge-m3"), ["a query"], queries=True, parts={"dense", "sparse"}).sparse.shape
        (1, 250002)
    """
    call = embedder.encode_queries if queries else embedder.encode_documents
    out = call(texts, dense="dense" in parts, sparse="sparse" in parts, colbert="colbert" in parts,
               max_length=max_length, show_progress=show_progress)
    sparse = to_csr(out.lexical_weights, embedder.vocab_size) if "sparse" in parts else None
    return Encoded(out.dense if "dense" in parts else None, sparse, out.colbert_vectors)


class ExactSearch:
    """Exact top-k of a corpus in dense, sparse, ColBERT or hybrid mode.

    Args:
        doc_ids: the documents' ids (strings, unique).
        docs: their `Encoded` outputs (the parts the modes need).
        device: where scores are computed and ranked (the engine's device).
        weights: hybrid weights (dense, sparse, colbert).

    Example:
        >>> index = ExactSearch(ids, encode(m3, texts, queries=False, parts={"dense"}), device="cuda:0")
        >>> index.search("dense", encode(m3, qs, queries=True, parts={"dense"}), qids, top_k=100)
    """

    def __init__(self, doc_ids: Sequence[str], docs: Encoded, *, device: str | torch.device = "cpu",
                 weights: Sequence[float] = DEFAULT_WEIGHTS, budget: int = SCORE_BUDGET) -> None:
        self.device = torch.device(device)
        self.weights = tuple(float(w) for w in weights)
        self.budget = int(budget)
        # Doc-id-descending order: a stable sort then ranks equal scores as pytrec_eval does.
        order = sorted(range(len(doc_ids)), key=lambda i: doc_ids[i], reverse=True)
        self.doc_ids = [doc_ids[i] for i in order]
        self.position = {doc_id: p for p, doc_id in enumerate(self.doc_ids)}
        self.dense = None if docs.dense is None else torch.from_numpy(np.ascontiguousarray(docs.dense[order])).to(
            self.device, torch.float32)
        self.sparse = None if docs.sparse is None else docs.sparse[order].tocsr()
        self.colbert = None if docs.colbert is None else [torch.from_numpy(np.asarray(docs.colbert[i])) for i in order]

    def __len__(self) -> int:
        return len(self.doc_ids)

    def search(self, mode: str, queries: Encoded, query_ids: Sequence[str], top_k: int, *,
               ignore_identical_ids: bool = False, show_progress: bool = False) -> Run:
        """``{query id: {doc id: score}}`` of the `top_k` best documents per query.

        Args:
            mode: ``"dense"``, ``"sparse"``, ``"colbert"`` or ``"hybrid"``.
            queries: the queries' `Encoded` outputs, in `query_ids` order.
            ignore_identical_ids: never return a document whose id equals the query's id.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        k = max(0, min(int(top_k), len(self)))
        n = len(query_ids)
        q_chunk, d_chunk = self._chunks(mode, queries, n, k)
        run: Run = {}
        bar = tqdm(total=n, desc=f"search {mode}", unit="query", disable=not show_progress)
        for q0 in range(0, n, q_chunk):
            q1 = min(n, q0 + q_chunk)
            excluded = [self.position.get(qid, -1) if ignore_identical_ids else -1 for qid in query_ids[q0:q1]]
            best_scores = torch.empty((q1 - q0, 0), device=self.device)
            best_index = torch.empty((q1 - q0, 0), dtype=torch.long, device=self.device)
            for d0 in range(0, len(self), d_chunk):
                d1 = min(len(self), d0 + d_chunk)
                scores = self._scores(mode, queries, q0, q1, d0, d1)
                for row, pos in enumerate(excluded):
                    if d0 <= pos < d1:
                        scores[row, pos - d0] = float("-inf")
                index = torch.arange(d0, d1, device=self.device).expand(q1 - q0, -1)
                best_scores = torch.cat([best_scores, scores], dim=1)
                best_index = torch.cat([best_index, index], dim=1)
                # Stable: among equal scores, earlier positions (larger doc ids) stay first.
                order = torch.sort(best_scores, dim=1, descending=True, stable=True).indices[:, :k]
                best_scores = torch.gather(best_scores, 1, order)
                best_index = torch.gather(best_index, 1, order)
            scores_np, index_np = best_scores.cpu().numpy(), best_index.cpu().numpy()
            doc_ids = self.doc_ids
            for row, qid in enumerate(query_ids[q0:q1]):
                keep = np.isfinite(scores_np[row])
                # Bulk conversions (tolist) instead of one numpy scalar per hit: a million hits per 1,000 queries.
                run[qid] = dict(zip([doc_ids[i] for i in index_np[row][keep].tolist()], scores_np[row][keep].tolist()))
            bar.update(q1 - q0)
        bar.close()
        return run

    # -- scoring -------------------------------------------------------------------------------

    def _chunks(self, mode: str, queries: Encoded, n: int, k: int) -> tuple[int, int]:
        q_chunk = max(1, min(n, 1024))
        if mode in ("colbert", "hybrid") and self._uses("colbert", mode):
            q_chunk = max(1, min(n, 32))
            q_len = max((len(v) for v in queries.colbert), default=1) or 1
            d_len = max((len(v) for v in self.colbert), default=1) or 1
            return q_chunk, max(1, self.budget // (q_chunk * q_len * d_len))
        return q_chunk, max(k + 1, self.budget // q_chunk)

    def _uses(self, part: str, mode: str) -> bool:
        if mode != "hybrid":
            return mode == part
        return bool(self.weights[("dense", "sparse", "colbert").index(part)])

    def _scores(self, mode: str, queries: Encoded, q0: int, q1: int, d0: int, d1: int) -> torch.Tensor:
        if mode == "dense":
            return self._dense(queries, q0, q1, d0, d1)
        if mode == "sparse":
            return self._sparse(queries, q0, q1, d0, d1)
        if mode == "colbert":
            return self._colbert(queries, q0, q1, d0, d1)
        total = torch.zeros((q1 - q0, d1 - d0), device=self.device)
        for weight, score in zip(self.weights, (self._dense, self._sparse, self._colbert)):
            if weight:
                total += weight * score(queries, q0, q1, d0, d1)
        return total / sum(self.weights)

    def _dense(self, queries: Encoded, q0: int, q1: int, d0: int, d1: int) -> torch.Tensor:
        if self.dense is None or queries.dense is None:
            raise ValueError("dense scores need dense vectors of the queries and the documents")
        q = torch.from_numpy(np.ascontiguousarray(queries.dense[q0:q1])).to(self.device, torch.float32)
        return q @ self.dense[d0:d1].T

    def _sparse(self, queries: Encoded, q0: int, q1: int, d0: int, d1: int) -> torch.Tensor:
        if self.sparse is None or queries.sparse is None:
            raise ValueError("sparse scores need lexical weights of the queries and the documents")
        product = (self.sparse[d0:d1] @ queries.sparse[q0:q1].T).toarray().T.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(product)).to(self.device)

    def _colbert(self, queries: Encoded, q0: int, q1: int, d0: int, d1: int) -> torch.Tensor:
        if self.colbert is None or queries.colbert is None:
            raise ValueError("ColBERT scores need ColBERT vectors of the queries and the documents")
        q, q_mask = _padded([torch.from_numpy(np.asarray(v)) for v in queries.colbert[q0:q1]], self.device)
        d, d_mask = _padded(self.colbert[d0:d1], self.device)
        sim = torch.einsum("aid,bjd->abij", q, d)  # (queries, docs, query tokens, doc tokens)
        sim = sim.masked_fill(~d_mask[None, :, None, :], float("-inf"))
        best = sim.max(dim=3).values if d.shape[1] else torch.zeros(sim.shape[:3], device=self.device)
        best = torch.where(torch.isinf(best), torch.zeros_like(best), best)  # empty document: best match 0
        best = best * q_mask[:, None, :]
        lengths = q_mask.sum(dim=1).clamp(min=1)  # empty query: score 0
        return best.sum(dim=2) / lengths[:, None]


def _padded(vectors: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(v) for v in vectors]
    dim = next((v.shape[1] for v in vectors if v.ndim == 2), 1)
    out = torch.zeros((len(vectors), max(lengths, default=0), dim), dtype=torch.float32)
    mask = torch.zeros((len(vectors), max(lengths, default=0)), dtype=torch.bool)
    for i, v in enumerate(vectors):
        if len(v):
            out[i, : len(v)] = v.to(torch.float32)
            mask[i, : len(v)] = True
    return out.to(device), mask.to(device)


# -- Milvus ----------------------------------------------------------------------------------------


def collection_name(model: str, doc_ids: Sequence[str], doc_texts: Sequence[str]) -> str:
    """A collection name unique to (model, corpus): a rerun reuses it, a changed corpus gets a new one.

    Example:
        >>> collection_name("BAAI/bge-m3", ["1"], ["text"])
        'bge_eval_...'
    """
    digest = hashlib.sha1(model.encode())
    for doc_id, text in zip(doc_ids, doc_texts):
        digest.update(doc_id.encode() + b"\0" + text.encode() + b"\0")
    return f"bge_eval_{digest.hexdigest()[:16]}"


def milvus_search(embedder: Embedder, doc_ids: Sequence[str], doc_texts: Sequence[str], queries: dict[str, str],
                  mode: str, top_k: int, *, uri: str, weights: Sequence[float] = DEFAULT_WEIGHTS,
                  ignore_identical_ids: bool = False, show_progress: bool = False, max_length: int | None = None,
                  ) -> Run:
    """The same run through `bge_milvus.HybridCollection` (Milvus Lite file or server at `uri`).

    Modes: ``dense``, ``sparse`` and ``hybrid`` (Milvus's weighted fusion of dense and sparse with the
    dense and sparse `weights`; ColBERT is not stored in Milvus). The corpus is indexed once per
    (model, corpus) into a collection named by `collection_name`.

    Example:
        >>> milvus_search(m3, ids, texts, {"q1": "what is BGE?"}, "dense", 10, uri="./eval.db")
    """
    from bge_milvus import HybridCollection

    if mode not in ("dense", "sparse", "hybrid"):
        raise ValueError(f"the milvus backend searches dense, sparse or hybrid, not {mode!r}")
    name = collection_name(embedder.name, doc_ids, doc_texts)
    limit = min(16384, int(top_k) + (1 if ignore_identical_ids else 0))  # Milvus caps top-k at 16384
    ranker: Any = (weights[0], weights[1])
    run: Run = {}
    with HybridCollection(name, embedder, uri=uri, max_length=max_length) as collection:
        if collection.count() != len(doc_ids):
            collection.add(list(doc_texts), ids=list(doc_ids), show_progress=show_progress)
        for qid, text in tqdm(queries.items(), desc=f"search {mode} (milvus)", unit="query",
                              disable=not show_progress):
            hits = collection.search(text, k=limit, mode=mode, ranker=ranker if mode == "hybrid" else None)
            kept = [h for h in hits if not (ignore_identical_ids and h.id == qid)][: int(top_k)]
            run[qid] = {h.id: float(np.float32(h.score)) for h in kept}
    return run
