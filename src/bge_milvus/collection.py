"""`HybridCollection`: a BGE-M3 dense + sparse collection on Milvus Lite or any Milvus, with hybrid search."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from bge_core import Embedder, Embeddings, Reranker, colbert_score
from bge_core.sparse import storable
from bge_milvus import backend
from bge_milvus.backend import DENSE, ID, METADATA, SPARSE, TEXT, Hit
from bge_milvus.embedding_function import BGEM3EmbeddingFunction, core_m3
from bge_milvus.inputs import checked_ids, checked_metadata, checked_texts, same_row

Mode = Literal["hybrid", "dense", "sparse"]


class HybridCollection:
    """A Milvus collection of texts with BGE-M3 dense and sparse vectors, searched dense, sparse or hybrid.

    Rows are ``id`` (VARCHAR primary key: the id you give, or `bge_milvus.content_id` of the text), ``text``,
    ``dense`` (FLOAT_VECTOR), ``sparse`` (SPARSE_FLOAT_VECTOR) and ``metadata`` (JSON), with
    inner-product indexes: FLAT + SPARSE_INVERTED_INDEX on Milvus Lite, HNSW + SPARSE_INVERTED_INDEX
    on a server (override with `dense_index` / `sparse_index`). An existing collection is reopened
    (and loaded); one whose dense dimension differs from the model's raises `ValueError` before
    anything is written.

    `add` embeds in batches (dense and sparse from one forward) and upserts each batch, so it is
    idempotent: adding the same texts (or ids) again leaves one row each, and rows whose text and
    metadata are already stored are not embedded again. An `add` that stopped half-way (crash,
    Ctrl-C) is resumed by calling it again with the same input.

    A text with no lexical weights (``""``, or only special tokens) is stored with the placeholder
    sparse vector of `bge_core.sparse.storable` (``{pad_token_id: 1e-06}``), because Milvus rejects an
    empty sparse row; it adds ~0 to every sparse score and the row is found by dense search.

    Args:
        collection_name: the collection to create or reopen.
        model_name: hub id or local directory of a BGE-M3, a loaded `bge_core.Embedder`, or a
            `BGEM3EmbeddingFunction` (its model is used).
        uri: a Milvus Lite file (default ``"./bge.db"``) or a server address (``"http://host:19530"``).
        token: ``"user:password"`` or an API key for a server; db_name: the server database.
        device / dtype: where and in which precision the model runs (default: first GPU, bf16; else CPU, fp32).
        max_length: tokens per text (default: the model's, 8192 for BGE-M3).
        batch_size: rows embedded and written per batch in `add`.
        dense_index / sparse_index: ``{"index_type": ..., "params": {...}}`` for a new collection (metric is IP).
        text_max_length: VARCHAR size of the text field (bytes, at most 65535).

    Example:
        >>> from bge_milvus import HybridCollection, RRF
        >>> docs = HybridCollection("docs", "BAAI/bge-m3")                  # ./bge.db (Milvus Lite)
        >>> docs.add(["Alan Turing was the first person to conduct research in AI."], metadata=[{"page": 3}])
        >>> docs.search("Who started AI research?", k=3, mode="hybrid", ranker=RRF(60), rerank="colbert")
        >>> server = HybridCollection("docs", uri="http://localhost:19530", token="root:Milvus")
    """

    def __init__(
        self,
        collection_name: str = "bge_hybrid",
        model_name: str | Path | Embedder | BGEM3EmbeddingFunction = "BAAI/bge-m3",
        *,
        uri: str | os.PathLike = "./bge.db",
        token: str = "",
        db_name: str = "",
        device: str | None = None,
        dtype: str | None = None,
        max_length: int | None = None,
        batch_size: int = 64,
        dense_index: dict[str, Any] | None = None,
        sparse_index: dict[str, Any] | None = None,
        text_max_length: int = backend.TEXT_MAX_LENGTH,
    ) -> None:
        if isinstance(model_name, BGEM3EmbeddingFunction):
            self.embedder = model_name.embedder
        else:
            self.embedder = core_m3(model_name, device=device, dtype=dtype)
        self.name = collection_name
        self.lite = backend.is_lite(uri)
        self.device = device
        self.max_length = max_length
        self.batch_size = int(batch_size)
        self.text_max_length = int(text_max_length)
        self.dense_index = dict(dense_index or (backend.LITE_DENSE_INDEX if self.lite else backend.SERVER_DENSE_INDEX))
        self._rerankers: dict[str, Reranker] = {}
        # Few retries on Milvus Lite: a dead local server fails a call at once instead of after minutes.
        self._requests = backend.request_options(uri)
        self.client = backend.open_client(uri, token, db_name)
        try:
            if self.client.has_collection(collection_name):
                backend.check_collection(self.client, collection_name, self.embedder.dim)
                self.client.load_collection(collection_name)  # a reopened collection is not loaded yet
            else:
                backend.create_collection(
                    self.client, collection_name, self.embedder.dim, self.dense_index,
                    dict(sparse_index or backend.SPARSE_INDEX), self.text_max_length,
                )
        except BaseException:
            self.client.close()
            raise

    # -- writing ---------------------------------------------------------------------------------

    def add(
        self,
        texts: Sequence[str],
        ids: Sequence[str] | None = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
        *,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> list[str]:
        """Embed and upsert texts; returns their ids (in input order).

        Every input is checked before the first write, so bad input never leaves a half-written
        batch. A repeated id (or text, without ids) keeps its last occurrence, as an upsert would.

        Raises:
            TypeError: a text, id or metadata item has the wrong type (its index is named).
            ValueError: `ids` / `metadata` have another length than `texts`, an id is empty or
                too long, or texts exceed `text_max_length` bytes (indices listed).

        Example:
            >>> docs.add(["first text", "second text"], ids=["a", "b"], metadata=[{"src": "x"}, None])
            ['a', 'b']
        """
        texts = checked_texts(texts, self.text_max_length)
        ids = checked_ids(ids, texts)
        metas = checked_metadata(metadata, len(texts))
        last = {row_id: i for i, row_id in enumerate(ids)}  # one row per id: its last occurrence wins
        order = sorted(last.values())
        size = max(1, batch_size or self.batch_size)
        batches = [order[start:start + size] for start in range(0, len(order), size)]
        for batch in tqdm(batches, desc="HybridCollection.add", disable=not show_progress):
            self._write(batch, texts, ids, metas)
        return ids

    def _write(self, batch: list[int], texts: list[str], ids: list[str], metas: list[dict[str, Any]]) -> None:
        stored = {row[ID]: row for row in self.client.get(self.name, ids=[ids[i] for i in batch],
                                                          output_fields=backend.OUTPUT_FIELDS, **self._requests)}
        # Rows already stored with the same text and metadata (a resumed or repeated add) cost nothing.
        todo = [i for i in batch if not same_row(stored.get(ids[i]), texts[i], metas[i])]
        if not todo:
            return
        out = self._embed([texts[i] for i in todo])
        pad = self.embedder.pad_token_id
        rows = [
            {
                ID: ids[i], TEXT: texts[i], METADATA: metas[i], DENSE: out.dense[j].tolist(),
                SPARSE: {int(t): float(w) for t, w in storable(out.lexical_weights[j], pad).items()},
            }
            for j, i in enumerate(todo)
        ]
        self.client.upsert(self.name, rows, **self._requests)

    def _embed(self, texts: list[str]) -> Embeddings:
        return self.embedder.encode_documents(texts, dense=True, sparse=True, max_length=self.max_length)

    def delete(self, ids: Sequence[str]) -> None:
        """Remove rows by id.

        Example:
            >>> docs.delete(["a"])
        """
        self.client.delete(self.name, ids=list(ids), **self._requests)

    def count(self) -> int:
        """Number of rows.

        Example:
            >>> docs.count()
            2
        """
        return backend.count(self.client, self.name, **self._requests)

    __len__ = count

    # -- reading ---------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: Mode = "hybrid",
        ranker: Any = None,
        filter: str | None = None,
        rerank: None | Literal["colbert"] | str | Path | Reranker | Callable[..., Any] = None,
        candidates: int | None = None,
    ) -> list[Hit]:
        """The `k` best rows for `query`, best first.

        Args:
            query: the query text.
            k: number of hits.
            mode: ``"hybrid"`` (dense and sparse fused by `ranker`), ``"dense"`` or ``"sparse"``.
            ranker: hybrid fusion: `RRF(k)` (default ``RRF(60)``), `Weighted(dense, sparse)`, a
                ``(w_dense, w_sparse)`` pair, or a pymilvus ranker.
            filter: a Milvus boolean expression, e.g. ``'metadata["lang"] == "en"'``.
            rerank: re-score the candidates: ``"colbert"`` (BGE-M3's multi-vector MaxSim), a
                `bge_core.Reranker`, a `BGERerankFunction` (or any pymilvus-model rerank function),
                or a reranker's hub id / directory.
            candidates: rows fetched before reranking (default ``max(4 * k, 20)``).

        Example:
            >>> [h.text for h in docs.search("second", k=1, mode="sparse")]
            ['second text']
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be str, got {type(query).__name__}")
        if mode not in ("hybrid", "dense", "sparse"):
            raise ValueError(f"mode must be 'hybrid', 'dense' or 'sparse', got {mode!r}")
        if k <= 0:
            return []
        limit = k if rerank is None else max(k, candidates or max(4 * k, 20))
        q = self.embedder.encode_queries([query], dense=True, sparse=True, max_length=self.max_length)
        dense = q.dense[0].tolist()
        # An empty query's sparse side is the placeholder too: Milvus rejects an empty sparse vector.
        sparse = storable(q.lexical_weights[0], self.embedder.pad_token_id)
        index_type = self.dense_index["index_type"]
        if mode == "hybrid":
            from pymilvus import AnnSearchRequest

            deep = max(2 * limit, 20)  # fuse deeper lists than the hits kept
            reqs = [
                AnnSearchRequest([dense], DENSE, backend.dense_search_params(index_type, deep), limit=deep,
                                 expr=filter or None),
                AnnSearchRequest([sparse], SPARSE, backend.SPARSE_SEARCH_PARAMS, limit=deep, expr=filter or None),
            ]
            results = self.client.hybrid_search(self.name, reqs, ranker=backend.to_ranker(ranker), limit=limit,
                                                output_fields=backend.OUTPUT_FIELDS, **self._requests)
        else:
            field, data, params = (DENSE, dense, backend.dense_search_params(index_type, limit)) if mode == "dense" \
                else (SPARSE, sparse, backend.SPARSE_SEARCH_PARAMS)
            results = self.client.search(self.name, data=[data], anns_field=field, limit=limit, filter=filter or "",
                                         output_fields=backend.OUTPUT_FIELDS, search_params=params, **self._requests)
        hits = backend.to_hits(results[0])
        if rerank is not None and hits:
            hits = self._rerank(query, hits, rerank)
        return hits[:k]

    def _rerank(self, query: str, hits: list[Hit], rerank: Any) -> list[Hit]:
        texts = [h.text for h in hits]
        if isinstance(rerank, str) and rerank == "colbert":
            q = self.embedder.encode_queries([query], dense=False, colbert=True, max_length=self.max_length)
            p = self.embedder.encode_documents(texts, dense=False, colbert=True, max_length=self.max_length)
            scores = [colbert_score(q.colbert_vectors[0], vectors) for vectors in p.colbert_vectors]
        else:
            scores = self._cross_scores(query, texts, rerank)
        order = sorted(range(len(hits)), key=lambda i: -scores[i])
        return [replace(hits[i], score=float(scores[i])) for i in order]

    def _cross_scores(self, query: str, texts: list[str], rerank: Any) -> list[float]:
        if isinstance(rerank, (str, Path)):
            key = str(rerank)
            if key not in self._rerankers:  # core shares the weights; keep the handle for later searches
                self._rerankers[key] = Reranker(key, device=self.device)
            rerank = self._rerankers[key]
        if isinstance(rerank, Reranker):
            scores = rerank.score([(query, t) for t in texts])
            return (scores[-1] if scores.ndim == 2 else scores).tolist()
        if callable(rerank):  # BGERerankFunction or any pymilvus-model rerank function
            scores = [float("-inf")] * len(texts)
            for result in rerank(query, texts, top_k=len(texts)):
                scores[result.index] = float(result.score)
            return scores
        raise TypeError(f"rerank must be None, 'colbert', a reranker path or a reranker, got {type(rerank).__name__}")

    # -- lifecycle -------------------------------------------------------------------------------

    def drop(self) -> None:
        """Delete the collection and all its rows.

        Example:
            >>> docs.drop()
        """
        self.client.drop_collection(self.name)

    def close(self) -> None:
        """Close the connection (for Milvus Lite this stops its server process once no client uses it)."""
        self.client.close()

    def __enter__(self) -> HybridCollection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
