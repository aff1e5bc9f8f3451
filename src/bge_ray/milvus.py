"""`MilvusDatasink`: upsert Ray Data rows into a `bge_milvus.HybridCollection` collection, and `index`.

Writes are upserts keyed by the row id (the id column, or `bge_milvus.content_id` of the text, as
`HybridCollection.add` assigns it), so a retried write task, a restarted actor or a whole re-run job
leaves exactly one row per id.

Who writes:

* **Milvus server** (``http://…``): every Ray write task opens its own client and upserts its blocks, so
  writes run in parallel across the cluster.
* **Milvus Lite** (a ``.db`` file): Lite serves a file to one process at a time, and Ray write tasks run
  in worker processes, so they cannot each open it (nor can any of them while the driver has it open).
  The sink therefore starts one *writer actor* on the driver's node when it is created; it alone opens
  the file, and the write tasks send it their rows (``ray.get(writer.upsert.remote(rows))``), one call at
  a time. When the job ends (done or failed) the actor closes the file and exits, so the driver, or the
  next job, can open it again. The caller must not hold the file open while the job runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from ray.data import Datasink

from bge_core.sparse import storable
from bge_milvus import backend
from bge_milvus.backend import DENSE, ID, METADATA, SPARSE, TEXT
from bge_milvus.inputs import content_id
from bge_ray.encode import VECTOR_COLUMNS, encode, validate
from bge_ray.rows import BadRowError, dense_matrix, describe_row, ids_of, metadata_of, sparse_dicts, texts_of

if TYPE_CHECKING:
    from ray.data import Dataset
    from ray.data.block import Block
    from ray.data.datasource.datasink import WriteResult

#: Rows per upsert request (well under Milvus's 64 MB gRPC message limit for 1024-dim vectors).
UPSERT_ROWS = 512


def milvus_rows(table: pa.Table, *, text_column: str, id_column: str | None, placeholder_id: int) -> list[dict]:
    """The rows of one encoded block as `HybridCollection` rows: id, text, dense, sparse, metadata.

    The id is the id column's value (str, or an integer written in decimal) or, where there is none (no
    column, or null), `content_id(text)`;
    an empty sparse vector becomes `bge_core.sparse.storable`'s placeholder (Milvus rejects empty
    ones); the block's other non-vector columns become metadata (nulls left out). A repeated id keeps
    its last row, as an upsert would.

    Example:
        >>> milvus_rows(encoded_table, text_column="text", id_column="id", placeholder_id=1)[0].keys()
        dict_keys(['id', 'text', 'dense', 'sparse', 'metadata'])
    """
    texts, row, problem = texts_of(table, text_column)
    if texts is None:
        raise BadRowError(f"{describe_row(table, row, id_column)}: {problem}")
    ids, row, problem = ids_of(table, id_column, backend.ID_MAX_LENGTH, default=lambda i: content_id(texts[i]))
    if row >= 0:
        raise BadRowError(f"{describe_row(table, row, id_column)}: {problem}")
    if ids is None:
        ids = [content_id(t) for t in texts]
    missing = [c for c in ("dense", "sparse_indices", "sparse_values") if c not in table.column_names]
    if missing and table.num_rows:
        raise ValueError(f"the rows lack the column(s) {missing}: encode them with "
                         "bge_ray.encode(ds, model, dense=True, sparse=True) first")
    dense = dense_matrix(table.column("dense")) if table.num_rows else None
    sparse = sparse_dicts(table.column("sparse_indices"), table.column("sparse_values")) if table.num_rows else []
    meta_columns = [c for c in table.column_names if c not in (text_column, id_column, *VECTOR_COLUMNS)]
    rows = {}
    for i, (row_id, text, weights, meta) in enumerate(zip(ids, texts, sparse, metadata_of(table, meta_columns))):
        rows[row_id] = {ID: row_id, TEXT: text, DENSE: dense[i].tolist(), SPARSE: storable(weights, placeholder_id),
                        METADATA: meta}
    return list(rows.values())


def _lite_writer_class() -> Any:
    import ray

    @ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)
    class LiteWriter:
        """The one process that opens a Milvus Lite file for a job; write tasks send it their rows."""

        def __init__(self, uri: str, collection_name: str, indexes: dict[str, Any]) -> None:
            self.uri, self.name, self.indexes = uri, collection_name, indexes
            self.client: Any = None

        def _open(self) -> Any:
            if self.client is None:
                self.client = backend.open_client(self.uri, "", "")
                if self.client.has_collection(self.name):  # a restarted actor: the job created it before
                    self.client.load_collection(self.name)
            return self.client

        def prepare(self, dim: int) -> None:
            _prepare_collection(self._open(), self.name, dim, self.indexes)

        def upsert(self, rows: list[dict]) -> int:
            client = self._open()
            client.upsert(self.name, rows, **backend.request_options(self.uri))
            return len(rows)

        def count(self) -> int:
            return backend.count(self._open(), self.name, **backend.request_options(self.uri))

        def close(self) -> None:
            if self.client is not None:
                self.client.close()
                self.client = None
            import contextlib

            with contextlib.suppress(ImportError):  # milvus-lite 2 keeps a server process per file: stop it
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self.uri)

    return LiteWriter


def _prepare_collection(client: Any, name: str, dim: int, indexes: dict[str, Any]) -> None:
    """Create the `HybridCollection` collection (bge_milvus's schema and indexes), or check an existing one."""
    if client.has_collection(name):
        backend.check_collection(client, name, dim)
        client.load_collection(name)
    else:
        backend.create_collection(client, name, dim, indexes["dense"], indexes["sparse"], indexes["text_max_length"])


class MilvusDatasink(Datasink[int]):
    """A Ray `Datasink` that upserts encoded rows into a `bge_milvus.HybridCollection` collection by id.

    Rows need ``text``, ``dense``, ``sparse_indices`` and ``sparse_values`` (what `bge_ray.encode` adds
    with ``sparse=True``) and optionally an id column; their other columns become metadata. The
    collection is created with `bge_milvus`'s schema and indexes when the first block arrives (its
    dense dimension read from the data), or checked when it exists; `HybridCollection(name, model,
    uri=…)` opens and searches it afterwards. See the module docstring for who writes on Lite and on a server.

    Args:
        collection_name / uri / token / db_name: as `HybridCollection`.
        placeholder_id: the token id stored for an empty sparse vector (the model's padding id, see
            `bge_core.sparse.storable`); `bge_ray.index` reads it from the model's tokenizer.
        text_column / id_column: where the texts and ids are (no id column: ids are `content_id(text)`).
        dense_index / sparse_index / text_max_length: for a new collection, as `HybridCollection`.

    After a successful write, ``rows_written`` holds the rows sent and ``count`` the collection's rows.

    Example:
        >>> encoded = bge_ray.encode(ds, "BAAI/bge-m3", sparse=True)
        >>> encoded.write_datasink(MilvusDatasink("docs", uri="./bge.db", placeholder_id=1))
    """

    def __init__(
        self, collection_name: str, *, uri: str | os.PathLike = "./bge.db", token: str = "", db_name: str = "",
        placeholder_id: int, text_column: str = "text", id_column: str | None = "id",
        dense_index: dict[str, Any] | None = None, sparse_index: dict[str, Any] | None = None,
        text_max_length: int = backend.TEXT_MAX_LENGTH,
    ) -> None:
        import ray

        self.name = collection_name
        self.lite = backend.is_lite(uri)
        self.uri = os.path.abspath(os.fspath(uri)) if self.lite else os.fspath(uri)
        self.token, self.db_name = token, db_name
        self.placeholder_id = int(placeholder_id)
        self.text_column, self.id_column = text_column, id_column
        self.indexes = {
            "dense": dict(dense_index or (backend.LITE_DENSE_INDEX if self.lite else backend.SERVER_DENSE_INDEX)),
            "sparse": dict(sparse_index or backend.SPARSE_INDEX), "text_max_length": int(text_max_length),
        }
        self.rows_written = 0
        self.count: int | None = None
        self._writer = None
        if self.lite:
            if not ray.is_initialized():
                ray.init()
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
            # Created now, on the driver, so the handle travels inside the sink to every write task.
            self._writer = _lite_writer_class().options(scheduling_strategy=here).remote(
                self.uri, self.name, self.indexes)

    # -- Ray's Datasink interface -------------------------------------------------------------------------

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        """Driver, before the first write task: create or check the collection (dimension from `schema`)."""
        import ray

        if schema is None or "dense" not in schema.names:
            raise ValueError("the rows have no 'dense' column: encode them with bge_ray.encode(…, sparse=True) first")
        dense_type = schema.field("dense").type
        dim = dense_type.list_size if pa.types.is_fixed_size_list(dense_type) else int(dense_type.shape[-1])
        if self._writer is not None:
            ray.get(self._writer.prepare.remote(dim))
            return
        client = backend.open_client(self.uri, self.token, self.db_name)
        try:
            _prepare_collection(client, self.name, dim, self.indexes)
        finally:
            client.close()

    def write(self, blocks: Iterable[Block], ctx: Any) -> int:
        """One write task: upsert its blocks (through the writer actor on Lite, a client of its own on a server)."""
        from ray.data.block import BlockAccessor

        import ray

        client = None if self._writer is not None else backend.open_client(self.uri, self.token, self.db_name)
        written = 0
        try:
            for block in blocks:
                table = BlockAccessor.for_block(block).to_arrow()
                rows = milvus_rows(table, text_column=self.text_column, id_column=self.id_column,
                                   placeholder_id=self.placeholder_id)
                for start in range(0, len(rows), UPSERT_ROWS):
                    part = rows[start:start + UPSERT_ROWS]
                    if self._writer is not None:
                        ray.get(self._writer.upsert.remote(part))
                    else:
                        client.upsert(self.name, part)
                    written += len(part)
        finally:
            if client is not None:
                client.close()
        return written

    def on_write_complete(self, write_result: WriteResult) -> None:
        """Driver, after the last write task: record the counts and let go of the Lite file."""
        self.rows_written = int(sum(write_result.write_returns))
        self.count = self._count()
        self.close()

    def on_write_failed(self, error: Exception) -> None:
        self.close()

    def get_name(self) -> str:
        return "Milvus"

    @property
    def supports_distributed_writes(self) -> bool:
        return True

    @property
    def min_rows_per_write(self) -> int | None:
        return None

    @property
    def min_bytes_per_write(self) -> int | None:
        return None

    # -- ours ------------------------------------------------------------------------------------------------

    def _count(self) -> int | None:
        import ray

        if self._writer is not None:
            return int(ray.get(self._writer.count.remote()))
        client = backend.open_client(self.uri, self.token, self.db_name)
        try:
            return backend.count(client, self.name) if client.has_collection(self.name) else 0
        finally:
            client.close()

    def close(self) -> None:
        """End the Lite writer actor (it closes the file first); safe to call more than once."""
        import ray

        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                ray.get(writer.close.remote(), timeout=60)
            finally:
                ray.kill(writer)


def placeholder_id_of(model: str) -> int:
    """The padding token id of `model`'s tokenizer (the placeholder of an empty sparse row), without loading weights.

    Example:
        >>> placeholder_id_of("BAAI/bge-m3")
        1
    """
    from transformers import AutoTokenizer

    from bge_core.loading import resolve_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_path(str(model)))
    if tokenizer.pad_token_id is None:
        raise ValueError(f"{model}: the tokenizer has no padding token")
    return int(tokenizer.pad_token_id)


def index(
    ds: Dataset, model: str, collection_name: str, *, uri: str | os.PathLike = "./bge.db", token: str = "",
    db_name: str = "", text_column: str = "text", id_column: str | None = "id", num_gpus: float | None = None,
    num_cpus: float | None = None, concurrency: int | tuple[int, int] | None = None, batch_size: int = 1024,
    write_concurrency: int | None = None, ray_remote_args: dict[str, Any] | None = None, where: str = "",
    **embedder_options: Any,
) -> MilvusDatasink:
    """Validate, encode (BGE-M3 dense + sparse, as documents) and upsert `ds` into a `HybridCollection` collection.

    Every row is checked first in a cheap pass without the model (`bge_ray.validate`: text present and a
    string within Milvus's size, id a string or integer within its size, metadata JSON-serialisable), so a
    bad row fails the job before anything is written. Rows without an id (no id column, or a null id)
    get `content_id(text)`. The job is idempotent (upserts by id), so it is resumed by running it again.
    `where` is put before error messages (e.g. the input file's name).

    Returns:
        The sink, with ``rows_written`` and ``count`` (rows in the collection) filled in.

    Raises:
        BadRowError: a bad row (its number, id, column and problem named); nothing was written.

    Example:
        >>> sink = bge_ray.index(ray.data.read_json("corpus.jsonl", lines=True), "BAAI/bge-m3", "docs")
        >>> sink.count
        1000000
    """
    validate(ds, text_column=text_column, id_column=id_column, max_text_bytes=backend.TEXT_MAX_LENGTH,
             max_id_bytes=backend.ID_MAX_LENGTH, check_metadata=True, null_ids=True, where=where)
    encoded = encode(ds, model, text_column=text_column, id_column=id_column, dense=True, sparse=True,
                     num_gpus=num_gpus, num_cpus=num_cpus, concurrency=concurrency, batch_size=batch_size,
                     ray_remote_args=ray_remote_args, **embedder_options)
    sink = MilvusDatasink(collection_name, uri=uri, token=token, db_name=db_name,
                             placeholder_id=placeholder_id_of(model), text_column=text_column, id_column=id_column)
    try:
        encoded.write_datasink(sink, concurrency=write_concurrency)
    finally:
        sink.close()
    return sink
