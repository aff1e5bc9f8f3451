"""Milvus bulk import for very large loads: pymilvus bulk-writer Parquet files from Ray, then an import job.

Row-by-row upserts (`MilvusDatasink`) send every vector through Milvus's proxy and write-ahead log. For
hundreds of millions of rows, Milvus's bulk import is cheaper: files in Milvus's own layout are put into
the object storage bucket that Milvus reads (MinIO/S3/Azure), and one import job turns them into
segments. The steps:

1. create the collection (`collection_schema` does it with `bge_milvus`'s schema and returns that schema);
2. ``write_bulk_files(ds, model, schema, "bulk/")``: Ray encodes and each write task writes its rows with a
   `pymilvus.bulk_writer.LocalBulkWriter` (Parquet; sparse vectors are stored as JSON in Parquet), or a
   `RemoteBulkWriter` straight into the bucket when given ``remote=``;
3. upload the local files into Milvus's bucket (skip with ``remote=``) and call `start_bulk_import` with
   their paths *relative to the bucket*; it starts the job (REST ``/v2/vectordb/jobs/import/create``) and
   waits for it.

Milvus Lite has no import API, so the last step needs a Milvus server. Unlike the sink, an import
inserts: importing the same files twice stores the rows twice; resume by importing the files not yet
imported, or load into a fresh collection.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ray.data import Datasink

from bge_milvus import backend
from bge_ray.encode import encode, validate
from bge_ray.milvus import _prepare_collection, milvus_rows, placeholder_id_of

if TYPE_CHECKING:
    from pymilvus import CollectionSchema
    from ray.data import Dataset
    from ray.data.block import Block
    from ray.data.datasource.datasink import WriteResult


def collection_schema(
    collection_name: str, *, uri: str | os.PathLike = "./bge.db", dim: int | None = None, token: str = "",
    db_name: str = "", dense_index: dict[str, Any] | None = None, sparse_index: dict[str, Any] | None = None,
    text_max_length: int = backend.TEXT_MAX_LENGTH,
) -> CollectionSchema:
    """The `CollectionSchema` of a `HybridCollection` collection, created first (with `dim`) if missing.

    The schema is read back from Milvus (``describe_collection``), so bulk files are written for exactly
    the collection they will be imported into.

    Example:
        >>> schema = collection_schema("docs", uri="http://milvus:19530", dim=1024, token="root:Milvus")
        >>> [f.name for f in schema.fields]
        ['id', 'text', 'dense', 'sparse', 'metadata']
    """
    from pymilvus import CollectionSchema

    lite = backend.is_lite(uri)
    client = backend.open_client(uri, token, db_name)
    try:
        if not client.has_collection(collection_name):
            if dim is None:
                raise ValueError(f"collection {collection_name!r} does not exist; pass dim= to create it")
            indexes = {"dense": dense_index or (backend.LITE_DENSE_INDEX if lite else backend.SERVER_DENSE_INDEX),
                       "sparse": sparse_index or backend.SPARSE_INDEX, "text_max_length": text_max_length}
            _prepare_collection(client, collection_name, dim, indexes)
        elif dim is not None:
            backend.check_collection(client, collection_name, dim)
        return CollectionSchema.construct_from_dict(client.describe_collection(collection_name))
    finally:
        client.close()


class BulkWriterDatasink(Datasink[list]):
    """A Ray `Datasink` writing encoded rows as pymilvus bulk-writer Parquet files for `schema`.

    Each write task has its own bulk writer (files land in a folder of their own under `local_path`,
    which must be shared storage on a multi-node cluster, or pass `remote`). Rows are converted exactly
    as `MilvusDatasink` converts them (`milvus_rows`: id, text, dense, sparse, metadata) and checked by
    the bulk writer against the schema. After the write, ``files`` lists the file groups (one list per
    file, as `bulk_import` takes them).

    Args:
        schema: the target collection's schema (`collection_schema`).
        local_path: folder for the files (LocalBulkWriter), or the local staging folder with `remote`.
        placeholder_id: the token id of an empty sparse vector (see `MilvusDatasink`).
        remote: ``{"remote_path": "bulk/", "connect_param": RemoteBulkWriter.S3ConnectParam(...)}`` to
            write into Milvus's bucket directly (RemoteBulkWriter).
        chunk_size: bytes per file before the writer starts another.

    Example:
        >>> sink = BulkWriterDatasink(schema, "bulk/", placeholder_id=1)
        >>> bge_ray.encode(ds, "BAAI/bge-m3", sparse=True).write_datasink(sink)
        >>> sink.files
        [['bulk/5a1…/1.parquet'], …]
    """

    def __init__(self, schema: CollectionSchema, local_path: str | os.PathLike, *, placeholder_id: int,
                 text_column: str = "text", id_column: str | None = "id", remote: dict[str, Any] | None = None,
                 chunk_size: int = 512 * 1024 * 1024) -> None:
        # pymilvus schema objects do not survive pickling (FieldSchema.__getattr__ recurses while unpickling):
        # write tasks get the dict form and rebuild the schema.
        self.schema_dict = schema.to_dict()
        self.local_path = os.path.abspath(os.fspath(local_path))
        self.placeholder_id = int(placeholder_id)
        self.text_column, self.id_column = text_column, id_column
        self.remote = remote
        self.chunk_size = int(chunk_size)
        self.files: list[list[str]] = []
        self.rows_written = 0

    def on_write_start(self, schema: Any = None) -> None:
        os.makedirs(self.local_path, exist_ok=True)

    @property
    def schema(self) -> CollectionSchema:
        """The target collection's schema."""
        from pymilvus import CollectionSchema

        return CollectionSchema.construct_from_dict(self.schema_dict)

    def _writer(self) -> Any:
        from pymilvus.bulk_writer import BulkFileType, LocalBulkWriter, RemoteBulkWriter

        if self.remote is None:
            return LocalBulkWriter(self.schema, self.local_path, chunk_size=self.chunk_size,
                                   file_type=BulkFileType.PARQUET)
        return RemoteBulkWriter(self.schema, self.remote["remote_path"], self.remote["connect_param"],
                                chunk_size=self.chunk_size, file_type=BulkFileType.PARQUET,
                                local_path=self.local_path)

    def write(self, blocks: Iterable[Block], ctx: Any) -> list:
        """One write task: its rows into a bulk writer of its own; returns (rows, file groups)."""
        from ray.data.block import BlockAccessor

        writer = self._writer()
        rows = 0
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            for row in milvus_rows(table, text_column=self.text_column, id_column=self.id_column,
                                   placeholder_id=self.placeholder_id):
                writer.append_row(row)
                rows += 1
        writer.commit()
        return [rows, [[str(f) for f in group] for group in writer.batch_files]]

    def on_write_complete(self, write_result: WriteResult) -> None:
        self.rows_written = sum(rows for rows, _ in write_result.write_returns)
        self.files = [group for _, groups in write_result.write_returns for group in groups]

    def get_name(self) -> str:
        return "MilvusBulkFiles"


def write_bulk_files(
    ds: Dataset, model: str, schema: CollectionSchema, local_path: str | os.PathLike, *, text_column: str = "text",
    id_column: str | None = "id", remote: dict[str, Any] | None = None, num_gpus: float | None = None,
    concurrency: int | tuple[int, int] | None = None, batch_size: int = 1024, **embedder_options: Any,
) -> BulkWriterDatasink:
    """Validate, encode (BGE-M3 dense + sparse) and write `ds` as bulk-import Parquet files for `schema`.

    Returns:
        The sink; ``sink.files`` are the file groups to upload and pass to `start_bulk_import`.

    Example:
        >>> schema = collection_schema("docs", uri="http://milvus:19530", dim=1024)
        >>> files = write_bulk_files(ds, "BAAI/bge-m3", schema, "/shared/bulk").files
    """
    validate(ds, text_column=text_column, id_column=id_column, max_text_bytes=backend.TEXT_MAX_LENGTH,
             max_id_bytes=backend.ID_MAX_LENGTH, check_metadata=True, null_ids=True)
    encoded = encode(ds, model, text_column=text_column, id_column=id_column, dense=True, sparse=True,
                     num_gpus=num_gpus, concurrency=concurrency, batch_size=batch_size, **embedder_options)
    sink = BulkWriterDatasink(schema, local_path, placeholder_id=placeholder_id_of(model), text_column=text_column,
                              id_column=id_column, remote=remote)
    encoded.write_datasink(sink)
    return sink


def start_bulk_import(
    url: str, collection_name: str, files: list[list[str]], *, token: str = "", db_name: str = "",
    wait: bool = True, timeout_s: float = 24 * 3600, poll_s: float = 10.0,
) -> dict[str, Any]:
    """Start a Milvus import job of bulk files (paths relative to Milvus's bucket) and, by default, wait for it.

    Uses pymilvus's REST helpers (`bulk_import`, `get_import_progress`); needs a Milvus server (2.4+),
    not Milvus Lite.

    Returns:
        The job's last progress record (``state``, ``progress``, ``importedRows``, …).

    Raises:
        RuntimeError: the server refused the job, or the job failed (its reason is included).
        TimeoutError: the job did not finish within `timeout_s`.

    Example:
        >>> start_bulk_import("http://milvus:19530", "docs", [["bulk/5a1…/1.parquet"]], token="root:Milvus")
        {'state': 'Completed', 'progress': 100, 'importedRows': 1000000, …}
    """
    from pymilvus.bulk_writer import bulk_import, get_import_progress

    answer = bulk_import(url=url, collection_name=collection_name, db_name=db_name, files=files,
                         api_key=token).json()
    if answer.get("code", 0) != 0:
        raise RuntimeError(f"bulk import refused: {answer}")
    job_id = answer["data"]["jobId"]
    deadline = time.monotonic() + timeout_s
    while True:
        progress = get_import_progress(url=url, job_id=job_id, api_key=token).json().get("data", {})
        if not wait or progress.get("state") in ("Completed", "Failed"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"import job {job_id} still {progress.get('state')} after {timeout_s} s")
        time.sleep(poll_s)
    if progress.get("state") == "Failed":
        raise RuntimeError(f"import job {job_id} failed: {progress.get('reason', progress)}")
    return {"jobId": job_id, **progress}
