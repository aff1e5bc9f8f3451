"""`bge index`: BGE-M3 dense + sparse vectors of a file into a Milvus collection, idempotently."""

from __future__ import annotations

import time

import click

from bge_cli.common import load_embedder, milvus, milvus_options, user_errors, warm_up_if_large
from bge_cli.io import InputError, chunked, read_records


@click.command()
@click.argument("input_path", metavar="INPUT")
@milvus_options
@click.option("--text-field", default="text", show_default=True, help="Text key (.jsonl) or column (.parquet).")
@click.option("--id-field", default="id", show_default=True,
              help="Id key/column, if any; else the id is a hash of the text (so re-adding is a no-op).")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1),
              help="Texts embedded and written per batch.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS|auto]",
              help="Run on Ray: one model per GPU actor, parallel upserts on a server, one writer on Milvus Lite "
                   "(--ray: a local Ray; --ray auto: the cluster running here; --ray ADDRESS: that cluster).")
def index(input_path: str, collection: str, uri: str, token: str, model: str, device: str | None,
          dtype: str | None, max_length: int | None, text_field: str, id_field: str, batch_size: int,
          quiet: bool, ray_address: str | None) -> None:
    """Add the texts of INPUT to a BGE-M3 dense + sparse collection. Idempotent and resumable: rows
    are upserted by id, rows already stored are not embedded again, so re-running after a failure
    completes the collection without duplicates. For .jsonl, a line's other fields become metadata."""
    from tqdm.auto import tqdm

    bge_milvus = milvus()
    if ray_address is not None:
        from bge_cli.ray_jobs import index_job

        with user_errors():
            click.echo(index_job(input_path, address=ray_address, collection=collection, uri=uri, token=token,
                                 model=model, text_field=text_field, id_field=id_field, batch_size=batch_size,
                                 quiet=quiet, embedder_options=dict(device=device, dtype=dtype,
                                                                    max_length=max_length)))
        return
    with user_errors():
        total = check_index_input(input_path, text_field, id_field)
        embedder = load_embedder(model, m3=True, device=device, dtype=dtype, max_length=max_length)
        warm_up_if_large(embedder, input_path)
        before, start = embedder.loaded.engine.rows_forwarded, time.perf_counter()
        with bge_milvus.HybridCollection(collection, embedder, uri=uri, token=token, max_length=max_length) as coll, \
                tqdm(total=total, unit="text", desc="index", disable=quiet) as bar:
            records = read_records(input_path, text_field=text_field, id_field=id_field)
            for chunk in chunked(records, batch_size):
                coll.add([r.text for r in chunk], ids=[r.id or bge_milvus.content_id(r.text) for r in chunk],
                         metadata=[r.metadata for r in chunk])
                bar.update(len(chunk))
            rows = coll.count()
        embedded = embedder.loaded.engine.rows_forwarded - before
        click.echo(f"indexed {total} texts from {input_path} into {collection!r} at {uri} in "
                   f"{time.perf_counter() - start:.1f} s ({embedded} embedded, {max(total - embedded, 0)} unchanged); "
                   f"the collection holds {rows} rows")


def check_index_input(path: str, text_field: str, id_field: str) -> int:
    """`scan` plus Milvus's limits, so a bad line stops the run before the first write."""
    from bge_milvus.backend import ID_MAX_LENGTH, TEXT_MAX_LENGTH

    where = (lambda r: f"{path}: row {r.line}") if path.lower().endswith(".parquet") else (lambda r: f"{path}:{r.line}")
    total = 0
    for record in read_records(path, text_field=text_field, id_field=id_field):
        total += 1
        if len(record.text.encode("utf-8")) > TEXT_MAX_LENGTH:
            raise InputError(f"{where(record)}: text longer than Milvus's {TEXT_MAX_LENGTH} bytes")
        if record.id is not None and len(record.id.encode("utf-8")) > ID_MAX_LENGTH:
            raise InputError(f"{where(record)}: id longer than {ID_MAX_LENGTH} bytes")
    return total
