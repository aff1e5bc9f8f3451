"""`bge encode`: vectors of a text, JSONL or Parquet file into Parquet or .npy, streaming."""

from __future__ import annotations

import os
import time

import click

from bge_cli.common import DTYPES, load_embedder, user_errors, warm_up_if_large
from bge_cli.io import InputError, atomic_output, chunked, read_records, scan


@click.command()
@click.argument("model")
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", required=True, help="OUTPUT.parquet (any outputs) or OUTPUT.npy (dense only).")
@click.option("--dense/--no-dense", default=True, show_default=True, help="Dense vectors (column `dense`).")
@click.option("--sparse", is_flag=True, help="BGE-M3 lexical weights (columns `sparse_indices`, `sparse_values`).")
@click.option("--colbert", is_flag=True, help="BGE-M3 ColBERT vectors (column `colbert`).")
@click.option("--queries", is_flag=True, help="Encode as queries (with the model's query instruction).")
@click.option("--text-field", default="text", show_default=True, help="Text key (.jsonl) or column (.parquet).")
@click.option("--id-field", default="id", show_default=True, help="Id key/column, if any; else the line number.")
@click.option("--device", help="cpu, cuda, cuda:1… (default: first GPU, else CPU).")
@click.option("--dtype", type=DTYPES, help="Default bf16 on GPU, fp32 on CPU.")
@click.option("--max-length", type=click.IntRange(min=1), help="Tokens per text (default: the model's).")
@click.option("--batch-tokens", type=click.IntRange(min=1), help="Token budget of one forward batch.")
@click.option("--chunk-size", default=1024, show_default=True, type=click.IntRange(min=1),
              help="Texts read, encoded and written at a time (memory stays bounded by it).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS|auto]",
              help="Run on Ray: one model per GPU actor (--ray: a local Ray; --ray auto: the cluster running here; "
                   "--ray ADDRESS: that cluster).")
def encode(model: str, input_path: str, output: str, dense: bool, sparse: bool, colbert: bool, queries: bool,
           text_field: str, id_field: str, device: str | None, dtype: str | None, max_length: int | None,
           batch_tokens: int | None, chunk_size: int, quiet: bool, ray_address: str | None) -> None:
    """Encode every text of INPUT (.txt: a text per line; .jsonl: objects with a text field; .parquet)
    with MODEL into OUTPUT, streaming: the input is never loaded whole, and OUTPUT appears only when
    complete."""
    from tqdm.auto import tqdm

    from bge_cli.io import NpySink, ParquetSink

    with user_errors():
        kind = os.path.splitext(output)[1].lower()
        if kind not in (".parquet", ".npy"):
            raise InputError(f"{output}: the output must end in .parquet or .npy")
        if kind == ".npy" and (sparse or colbert or not dense):
            raise InputError(f"{output}: .npy holds dense vectors only; write .parquet for --sparse/--colbert")
        if not (dense or sparse or colbert):
            raise click.UsageError("nothing to encode: --no-dense without --sparse or --colbert")
        if ray_address is not None:
            from bge_cli.ray_jobs import encode_job

            summary = encode_job(model, input_path, output, address=ray_address, dense=dense, sparse=sparse,
                                 colbert=colbert, queries=queries, text_field=text_field, id_field=id_field,
                                 quiet=quiet, embedder_options=dict(device=device, dtype=dtype, max_length=max_length,
                                                                    batch_tokens=batch_tokens))
            if not quiet:
                click.echo(summary)
            return
        total = scan(input_path, text_field=text_field, id_field=id_field)  # bad input fails before any work
        embedder = load_embedder(model, device=device, dtype=dtype, max_length=max_length, batch_tokens=batch_tokens)
        warm_up_if_large(embedder, input_path)
        if (sparse or colbert) and embedder.family != "m3":
            raise InputError(f"{model}: --sparse and --colbert need a BGE-M3 model; this is a {embedder.family} model")
        colbert_dim = embedder.colbert_dim if colbert else None
        encode_fn = embedder.encode_queries if queries else embedder.encode_documents
        engine = embedder.loaded.engine
        start, tokens_before = time.perf_counter(), engine.tokens_forwarded
        with atomic_output(output) as tmp:
            sink = NpySink(tmp, dim=embedder.dim) if kind == ".npy" else ParquetSink(
                tmp, dense_dim=embedder.dim if dense else None, sparse=sparse, colbert_dim=colbert_dim)
            with sink, tqdm(total=total, unit="text", desc="encode", disable=quiet) as bar:
                records = read_records(input_path, text_field=text_field, id_field=id_field)
                for chunk in chunked(records, chunk_size):
                    texts = [r.text for r in chunk]
                    out = encode_fn(texts, dense=dense, sparse=sparse, colbert=colbert)
                    sink.write([r.id or str(r.line) for r in chunk], texts, out)
                    tokens = engine.tokens_forwarded - tokens_before  # what the model read, as it read it
                    bar.update(len(chunk))
                    bar.set_postfix_str(f"{tokens / (time.perf_counter() - start):,.0f} tok/s")
        seconds = time.perf_counter() - start
        tokens = engine.tokens_forwarded - tokens_before
        if not quiet:
            click.echo(f"encoded {total} texts ({tokens:,} tokens) in {seconds:.1f} s: {total / seconds:,.1f} texts/s, "
                       f"{tokens / seconds:,.0f} tokens/s -> {output}")
