"""BGE embedders and rerankers as Ray Data actors: `encode`, `rerank`, and a cheap `validate` pass.

Each actor of the pool loads its model once (`bge_core.Embedder` / `bge_core.Reranker`, the same
engine as everywhere else in the project) and then maps Arrow batches: the input columns are kept and
the outputs are appended in the layout `bge encode` writes to Parquet.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from bge_cli.io import colbert_column, dense_column, sparse_columns  # the `bge encode` Parquet layout
from bge_ray.rows import BadRowError, describe_row, first_problem, texts_of

if TYPE_CHECKING:
    from ray.data import Dataset

#: Texts handed to one actor call; the engine forms its own token-budget batches inside (sorted by length).
DEFAULT_BATCH_SIZE = 1024
#: Output columns of `BGEEncoder` (never treated as metadata).
VECTOR_COLUMNS = ("dense", "sparse_indices", "sparse_values", "colbert")
#: Test-only fault hook: when set to a file path that does not exist yet, an encoder actor creates the file
#: and kills its own process (``os._exit``) in its second batch, once per job, so tests can check that Ray
#: restarts the actor, retries the batch, and that the written result is complete and has no duplicates.
FAULT_ENV = "BGE_RAY_FAULT_ONCE"


def _put(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    """`table` with `column` appended, or replacing a column of that name."""
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)


def _check_fault_hook(marker: str | None, calls: int) -> None:
    if marker and calls == 2 and not os.path.exists(marker):
        with open(marker, "w", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
        os._exit(1)  # a crash, not an exception: Ray must restart the actor and retry the batch


class BGEEncoder:
    """A `map_batches` class: encodes a text column with any BGE embedder, one model load per actor.

    Adds ``dense`` (fixed-size list of float32), ``sparse_indices`` (list of int32 token ids, sorted)
    with ``sparse_values`` (list of float32 weights), and ``colbert`` (per text a list of float32 vectors,
    one per token after CLS), as chosen; every other column passes through unchanged.

    Args:
        model: hub id or local checkpoint directory (each actor loads it).
        text_column: the column holding the texts.
        id_column: named in error messages when present (rows are never reordered within a batch).
        dense / sparse / colbert: which outputs to add (sparse and colbert need BGE-M3).
        queries: encode as queries (`Embedder.encode_queries`: the model's query instruction), else
            as documents (`encode_documents`).
        max_length / truncate: as `Embedder.encode`.
        embedder_options: `bge_core.Embedder` keywords (device, dtype, batch_tokens, query_instruction, …).

    Raises (inside the actor, failing the job):
        BadRowError: a row without the text column, or whose text is null or not a string; the
            message names the column and the row (its id when there is an id column).

    Example:
        >>> ds = ray.data.from_items([{"id": "a", "text": "hello"}])
        >>> ds.map_batches(BGEEncoder, fn_constructor_args=("BAAI/bge-m3",),
        ...                fn_constructor_kwargs={"sparse": True}, batch_format="pyarrow", concurrency=1)
    """

    def __init__(
        self, model: str, *, text_column: str = "text", id_column: str | None = "id", dense: bool = True,
        sparse: bool = False, colbert: bool = False, queries: bool = False, max_length: int | None = None,
        truncate: bool = True, _fault_marker: str | None = None, **embedder_options: Any,
    ) -> None:
        from bge_core import Embedder

        if not (dense or sparse or colbert):
            raise ValueError("nothing to encode: dense, sparse and colbert are all False")
        self.embedder = Embedder(model, **embedder_options)
        if (sparse or colbert) and self.embedder.family != "m3":
            raise ValueError(f"{model}: sparse and colbert need a BGE-M3 model; this is a {self.embedder.family} model")
        self.text_column, self.id_column = text_column, id_column
        self.dense, self.sparse, self.colbert = dense, sparse, colbert
        self.queries = queries
        self.options = {"max_length": max_length, "truncate": truncate}
        self._fault_marker = _fault_marker
        self._calls = 0

    def __call__(self, table: pa.Table) -> pa.Table:
        self._calls += 1
        _check_fault_hook(self._fault_marker, self._calls)
        texts, row, problem = texts_of(table, self.text_column)
        if texts is None:
            raise BadRowError(f"{describe_row(table, row, self.id_column)}: {problem}")
        fn = self.embedder.encode_queries if self.queries else self.embedder.encode_documents
        out = fn(texts, dense=self.dense, sparse=self.sparse, colbert=self.colbert, **self.options)
        if self.dense:
            table = _put(table, "dense", dense_column(out.dense))
        if self.sparse:
            indices, values = sparse_columns(out.lexical_weights)
            table = _put(_put(table, "sparse_indices", indices), "sparse_values", values)
        if self.colbert:
            table = _put(table, "colbert", colbert_column(out.colbert_vectors, int(self.embedder.colbert_dim)))
        return table


class BGEReranker:
    """A `map_batches` class: scores (query, passage) columns with any BGE reranker into a ``score`` column.

    ``score`` is float32, exactly `bge_core.Reranker.score` of the pairs (with several `cutoff_layers`,
    the last one's score, as `Reranker.rerank` ranks).

    Args:
        model: hub id or local checkpoint directory of a reranker.
        query_column / passage_column: the columns holding the pair's texts.
        normalize: sigmoid the scores into (0, 1) (default: raw logits, as `Reranker`).
        reranker_options: `bge_core.Reranker` keywords (device, dtype, max_length, prompt, …).

    Example:
        >>> pairs = ray.data.from_items([{"query": "panda?", "passage": "The giant panda is a bear."}])
        >>> pairs.map_batches(BGEReranker, fn_constructor_args=("BAAI/bge-reranker-v2-m3",),
        ...                   batch_format="pyarrow", concurrency=1)
    """

    def __init__(self, model: str, *, query_column: str = "query", passage_column: str = "passage",
                 id_column: str | None = "id", normalize: bool | None = None, **reranker_options: Any) -> None:
        from bge_core import Reranker

        self.reranker = Reranker(model, **reranker_options)
        self.query_column, self.passage_column, self.id_column = query_column, passage_column, id_column
        self.normalize = normalize

    def __call__(self, table: pa.Table) -> pa.Table:
        columns = []
        for name in (self.query_column, self.passage_column):
            texts, row, problem = texts_of(table, name)
            if texts is None:
                raise BadRowError(f"{describe_row(table, row, self.id_column)}: {problem}")
            columns.append(texts)
        scores = self.reranker.score(list(zip(*columns)), normalize=self.normalize) if table.num_rows else None
        if scores is None:
            return _put(table, "score", pa.array([], pa.float32()))
        return _put(table, "score", pa.array(scores[-1] if scores.ndim == 2 else scores, pa.float32()))


def actor_resources(num_gpus: float | None, concurrency: int | tuple[int, int] | None) -> tuple[float, Any]:
    """GPUs per actor and actor count: by default one GPU per actor and one actor per GPU of the cluster,
    or one CPU actor on a cluster without GPUs.

    Example:
        >>> actor_resources(None, None)      # on a cluster of 8 GPUs
        (1, 8)
    """
    import ray

    if not ray.is_initialized():
        ray.init()  # what Ray Data would do on first execution; here we need the cluster's size now
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if num_gpus is None:
        num_gpus = 1 if gpus >= 1 else 0
    if concurrency is None:
        concurrency = max(1, int(gpus // num_gpus)) if num_gpus else 1
    return num_gpus, concurrency


def _map_kwargs(num_gpus: float | None, num_cpus: float | None, concurrency: Any, batch_size: int,
                ray_remote_args: dict[str, Any] | None) -> dict[str, Any]:
    num_gpus, concurrency = actor_resources(num_gpus, concurrency)
    extra = {"num_cpus": num_cpus} if num_cpus is not None else {}
    return dict(batch_format="pyarrow", batch_size=batch_size, num_gpus=num_gpus, concurrency=concurrency,
                zero_copy_batch=True, **extra, **(ray_remote_args or {}))


def encode(
    ds: Dataset, model: str, *, text_column: str = "text", id_column: str | None = "id", dense: bool = True,
    sparse: bool = False, colbert: bool = False, queries: bool = False, num_gpus: float | None = None,
    num_cpus: float | None = None, concurrency: int | tuple[int, int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE, ray_remote_args: dict[str, Any] | None = None, **embedder_options: Any,
) -> Dataset:
    """`ds` with BGE vectors of its `text_column` added (lazy, like every Ray Data transform).

    Args:
        ds: a Ray Dataset with a string column `text_column`.
        model: hub id or local checkpoint directory; every actor loads it once.
        dense / sparse / colbert / queries: as `BGEEncoder`.
        num_gpus: GPUs per actor (default 1 when the cluster has GPUs, else 0).
        num_cpus: CPUs per actor (default: Ray Data's).
        concurrency: actors in the pool, or a (min, max) range for autoscaling (default: one per GPU).
        batch_size: texts per actor call.
        ray_remote_args: more `map_batches` keywords (e.g. ``{"max_restarts": 0}``).
        embedder_options: `bge_core.Embedder` keywords (dtype, max_length, batch_tokens, …).

    Returns:
        The new Dataset: the input columns plus ``dense`` / ``sparse_indices`` + ``sparse_values`` /
        ``colbert``. Rows keep their columns together; the order of rows across batches is Ray's
        (set ``DataContext.get_current().execution_options.preserve_order = True`` to keep input order).

    Example:
        >>> ds = ray.data.read_parquet("s3://bucket/passages/")
        >>> bge_ray.encode(ds, "BAAI/bge-m3", sparse=True).write_parquet("s3://bucket/vectors/")
    """
    constructor = dict(text_column=text_column, id_column=id_column, dense=dense, sparse=sparse, colbert=colbert,
                       queries=queries, _fault_marker=os.environ.get(FAULT_ENV) or None, **embedder_options)
    return ds.map_batches(BGEEncoder, fn_constructor_args=(str(model),), fn_constructor_kwargs=constructor,
                          **_map_kwargs(num_gpus, num_cpus, concurrency, batch_size, ray_remote_args))


def rerank(
    ds: Dataset, model: str, *, query_column: str = "query", passage_column: str = "passage",
    normalize: bool | None = None, num_gpus: float | None = None, num_cpus: float | None = None,
    concurrency: int | tuple[int, int] | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
    ray_remote_args: dict[str, Any] | None = None, **reranker_options: Any,
) -> Dataset:
    """`ds` with a float32 ``score`` column: a BGE reranker's score of each (query, passage) row.

    Example:
        >>> pairs = ray.data.read_json("pairs.jsonl", lines=True)       # {"query": …, "passage": …}
        >>> bge_ray.rerank(pairs, "BAAI/bge-reranker-v2-m3", normalize=True).take(1)[0]["score"]
    """
    constructor = dict(query_column=query_column, passage_column=passage_column, normalize=normalize,
                       **reranker_options)
    return ds.map_batches(BGEReranker, fn_constructor_args=(str(model),), fn_constructor_kwargs=constructor,
                          **_map_kwargs(num_gpus, num_cpus, concurrency, batch_size, ray_remote_args))


def _report(table: pa.Table, text_column: str, id_column: str | None, max_text_bytes: int | None,
            max_id_bytes: int | None, check_metadata: bool, null_ids: bool) -> pa.Table:
    """One row per block: its row count and its first bad row (position, problem, id)."""
    metadata = [c for c in table.column_names if c not in (text_column, id_column, *VECTOR_COLUMNS)] \
        if check_metadata else None
    row, problem = first_problem(table, text_column, id_column, max_text_bytes=max_text_bytes,
                                 max_id_bytes=max_id_bytes, metadata_columns=metadata, null_ids=null_ids)
    label = ""
    if row >= 0 and id_column and id_column in table.column_names:
        label = repr(table.column(id_column)[row].as_py())
    return pa.table({"rows": [table.num_rows], "bad": [row], "problem": [problem], "id": [label]})


def validate(
    ds: Dataset, *, text_column: str = "text", id_column: str | None = "id", max_text_bytes: int | None = None,
    max_id_bytes: int | None = None, check_metadata: bool = False, null_ids: bool = False, where: str = "",
) -> int:
    """Check every row of `ds` in one cheap pass (no model) and return the number of rows.

    Run it before a job that writes somewhere (a Milvus collection), so that a bad row stops the job
    before anything is written instead of after part of the dataset has been stored.

    Args:
        text_column / id_column: the columns to check (a missing id column is fine).
        max_text_bytes / max_id_bytes: size limits (UTF-8 bytes), e.g. Milvus's.
        check_metadata: the other columns must be JSON-serialisable (they become Milvus metadata).
        null_ids: a null id is fine (the writer gives the row a content id), else it is a bad row.
        where: put before the message, e.g. ``"corpus.jsonl: "``.

    Raises:
        BadRowError: names the first bad row: its number in the dataset's order (1-based), its id,
            the column and the problem (missing column, null, non-string text, bad id, too long).

    Example:
        >>> validate(ray.data.from_items([{"text": "a"}, {"text": 5}]))
        BadRowError: row 2: column 'text' must hold a string, got int
    """
    checker: Callable[..., pa.Table] = _report
    reports = ds.map_batches(
        checker, batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
        fn_kwargs=dict(text_column=text_column, id_column=id_column, max_text_bytes=max_text_bytes,
                       max_id_bytes=max_id_bytes, check_metadata=check_metadata, null_ids=null_ids),
    )
    # Block reports in input order turn a position within a block into a row number of the dataset.
    reports.context.execution_options.preserve_order = True
    total = 0
    for report in reports.take_all():
        if report["bad"] >= 0:
            label = f" (id {report['id']})" if report["id"] else ""
            raise BadRowError(f"{where}row {total + report['bad'] + 1}{label}: {report['problem']}")
        total += int(report["rows"])
    return total


__all__ = ["BGEEncoder", "BGEReranker", "DEFAULT_BATCH_SIZE", "FAULT_ENV", "VECTOR_COLUMNS", "encode", "rerank",
           "validate"]
