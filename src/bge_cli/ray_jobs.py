"""`bge encode --ray` and `bge index --ray`: the same jobs as without `--ray`, run on a Ray cluster by `bge_ray`.

The input is read by Ray (``read_parquet`` / ``read_json(lines=True)`` / ``read_text``), checked in one
cheap pass (`bge_ray.validate`), encoded by one actor per GPU, then either streamed back in input order
into the same Parquet (or .npy) file the non-Ray path writes, or upserted into the Milvus collection.
"""

from __future__ import annotations

import logging
import os
import time
from types import SimpleNamespace
from typing import Any

import click

from bge_cli.io import FORMATS, InputError, atomic_output


def connect(address: str, quiet: bool) -> None:
    """Join the Ray cluster at `address` (``auto``: the one running on this machine; ``local``: start one
    here), unless this process is already connected; progress bars on unless `quiet`."""
    from ray.data import DataContext

    import ray

    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, log_to_driver=not quiet)
    context = DataContext.get_current()
    context.enable_progress_bars = not quiet
    if quiet:
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def read_input(path: str, text_field: str, id_field: str) -> Any:
    """A Ray Dataset of the input file (or folder of Parquet files; remote URIs as Ray reads them)."""
    import ray

    local = "://" not in path
    if local and not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    suffix = os.path.splitext(path.rstrip("/"))[1].lower()
    kind = "parquet" if local and os.path.isdir(path) else FORMATS.get(suffix)
    if kind is None:
        raise InputError(f"{path}: unsupported input format {suffix or '(no suffix)'!r}; "
                         "expected .txt (a text per line), .jsonl or .parquet")
    if kind == "txt":
        return ray.data.read_text(path)  # blank lines are dropped, as without --ray
    if kind == "jsonl":
        return ray.data.read_json(path, lines=True)
    import pyarrow.parquet as pq

    # Only the text and id columns, as without --ray (where Parquet rows carry no metadata).
    names = pq.read_schema(path).names if local and not os.path.isdir(path) else None
    columns = [c for c in (text_field, id_field) if names is None or c in names]
    return ray.data.read_parquet(path, columns=columns if names is not None and text_field in names else None)


def checked_rows(ds: Any, path: str, **checks: Any) -> int:
    """`bge_ray.validate` with Ray's read errors turned into one line naming the file."""
    import bge_ray
    import ray

    try:
        return bge_ray.validate(ds, where=f"{path}: ", **checks)
    except ray.exceptions.RayError as error:
        raise InputError(f"{path}: cannot read ({root_cause(error)})") from None


def root_cause(error: BaseException) -> str:
    """The innermost error under Ray's wrappers, as ``Type: first line``."""
    seen = error
    while True:
        inner = getattr(seen, "cause", None) or seen.__cause__
        if inner is None or inner is seen:
            break
        seen = inner
    text = str(seen).strip().splitlines()
    return f"{type(seen).__name__}: {text[0] if text else ''}".rstrip(": ")


def encode_job(model: str, input_path: str, output: str, *, address: str, dense: bool, sparse: bool,
               colbert: bool, queries: bool, text_field: str, id_field: str, quiet: bool,
               embedder_options: dict[str, Any]) -> str:
    """Run `bge encode` on Ray; returns the summary line."""
    import bge_ray
    import ray

    connect(address, quiet)
    text_column = "text" if input_path.lower().endswith(".txt") else text_field
    ds = read_input(input_path, text_field, id_field)
    total = checked_rows(ds, input_path, text_column=text_column, id_column=id_field, null_ids=True)
    options = {k: v for k, v in embedder_options.items() if v is not None}
    encoded = bge_ray.encode(ds, model, text_column=text_column, id_column=id_field, dense=dense, sparse=sparse,
                             colbert=colbert, queries=queries, **options)
    # Rows come back in input order, so a row without an id gets its number, as without --ray.
    encoded.context.execution_options.preserve_order = True
    start = time.perf_counter()
    try:
        write_output(encoded, output, input_path, id_field, text_column, dense, sparse, colbert)
    except ray.exceptions.RayError as error:
        raise click.ClickException(f"{input_path}: the Ray job failed ({root_cause(error)})") from None
    seconds = time.perf_counter() - start
    return f"encoded {total} texts on Ray in {seconds:.1f} s: {total / max(seconds, 1e-9):,.1f} texts/s -> {output}"


def write_output(encoded: Any, output: str, input_path: str, id_field: str, text_column: str, dense: bool,
                 sparse: bool, colbert: bool) -> None:
    """Stream the encoded rows, in input order, into OUTPUT (moved into place only when complete)."""
    from bge_cli.io import NpySink, ParquetSink

    rows = 0
    with atomic_output(output) as tmp:
        sink = None
        for table in encoded.iter_batches(batch_format="pyarrow", batch_size=None):
            ids = row_ids(table, id_field, rows)
            texts = table.column(text_column).to_pylist()
            if sink is None:
                dim = table.schema.field("dense").type.list_size if dense else None
                colbert_dim = table.schema.field("colbert").type.value_type.list_size if colbert else None
                sink = NpySink(tmp, dim=dim) if output.lower().endswith(".npy") else ParquetSink(
                    tmp, dense_dim=dim, sparse=sparse, colbert_dim=colbert_dim)
            write_table(sink, ids, texts, table)
            rows += table.num_rows
        if sink is None:  # an empty input: an empty file of the right layout needs the model's sizes
            raise InputError(f"{input_path}: no texts to encode")
        sink.close()


def row_ids(table: Any, id_field: str, before: int) -> list[str]:
    """Ids of one batch: the id column as str, else (or where null) the row's 1-based number in the input."""
    from bge_ray.rows import id_text

    values = table.column(id_field).to_pylist() if id_field in table.column_names else [None] * table.num_rows
    return [str(before + i + 1) if value is None else id_text(value) for i, value in enumerate(values)]


def write_table(sink: Any, ids: list[str], texts: list[str], table: Any) -> None:
    """One encoded batch into `ParquetSink` (its exact schema) or `NpySink`."""
    import pyarrow as pa

    from bge_cli.io import NpySink
    from bge_ray.rows import dense_matrix

    if isinstance(sink, NpySink):
        sink.write(ids, texts, SimpleNamespace(dense=dense_matrix(table.column("dense"))))
        return
    columns = [pa.array(ids, pa.string()), pa.array(texts, pa.string())]
    columns += [table.column(name) for name in sink.schema.names[2:]]
    sink.writer.write_table(pa.Table.from_arrays(columns, schema=sink.schema))
    sink.rows += len(ids)


def index_job(input_path: str, *, address: str, collection: str, uri: str, token: str, model: str,
              text_field: str, id_field: str, batch_size: int, quiet: bool,
              embedder_options: dict[str, Any]) -> str:
    """Run `bge index` on Ray; returns the summary line."""
    import bge_ray
    import ray

    connect(address, quiet)
    text_column = "text" if input_path.lower().endswith(".txt") else text_field
    ds = read_input(input_path, text_field, id_field)
    options = {k: v for k, v in embedder_options.items() if v is not None}
    start = time.perf_counter()
    try:
        sink = bge_ray.index(ds, model, collection, uri=uri, token=token, text_column=text_column,
                             id_column=id_field, batch_size=batch_size, where=f"{input_path}: ", **options)
    except ray.exceptions.RayError as error:
        raise click.ClickException(f"{input_path}: the Ray job failed ({root_cause(error)})") from None
    return (f"indexed {sink.rows_written} texts from {input_path} into {collection!r} at {uri} on Ray in "
            f"{time.perf_counter() - start:.1f} s; the collection holds {sink.count} rows")
