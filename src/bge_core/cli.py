"""The `bge` command: encode files, index them into Milvus, search, and run the end-to-end demo.

    bge encode MODEL INPUT -o OUTPUT [--sparse] [--colbert]      vectors of a .txt/.jsonl/.parquet file
    bge index INPUT --collection NAME [--uri ./bge.db]            BGE-M3 dense + sparse into Milvus
    bge search QUERY --collection NAME [--mode hybrid] [--rerank MODEL] [-k 10] [--json]
    bge demo                                                       the main job on a bundled corpus

A thin layer: reading and writing files is `bge_core.io`, models are `bge_core.Embedder` /
`bge_core.Reranker`, collections are `bge_milvus.HybridCollection`, the demo is `bge_core.demo`.
Errors a user can fix (bad input file, unknown model, wrong option) print one line and exit 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import click

from bge_core.demo import DEFAULT_MODEL, DEFAULT_RERANKER, prepare_hub
from bge_core.errors import BgeCoreError
from bge_core.io import InputError, atomic_output, chunked, excerpt, format_table, read_records, scan

DTYPES = click.Choice(["fp32", "fp16", "bf16"], case_sensitive=False)


def _quiet_libraries() -> None:
    """Keep the terminal for our own output: no weight-loading bars or library chatter."""
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # milvus-lite 2.x imports it
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hook = getattr(hf_logging, "set_tqdm_hook", None)  # transformers' own bars only; downloads keep theirs
    if hook is not None:
        hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Errors a user can fix become one ``Error: …`` line and exit status 1 (bugs keep their traceback)."""
    try:
        yield
    except Exception as error:
        pymilvus = sys.modules.get("pymilvus")  # imported only by the commands that talk to Milvus
        from_milvus = pymilvus is not None and isinstance(error, pymilvus.MilvusException)
        if isinstance(error, (BgeCoreError, ValueError, OSError)) or from_milvus:
            raise click.ClickException(str(error) or type(error).__name__) from None
        raise


def milvus() -> Any:
    """The `bge_milvus` module, or a one-line hint when the Milvus extra is not installed."""
    try:
        import bge_milvus
    except ImportError as error:
        raise click.ClickException(f"{error}; install it with: pip install 'bge-plugins[milvus]'") from None
    return bge_milvus


def load_embedder(model: str, *, m3: bool = False, **options: Any) -> Any:
    """The core `Embedder` for `model` (a BGE-M3 when `m3`: Milvus collections need its sparse head)."""
    from bge_core import Embedder

    prepare_hub([model])
    embedder = Embedder(model, **{k: v for k, v in options.items() if v is not None})
    if m3 and embedder.family != "m3":
        raise InputError(f"{model}: a {embedder.family} model; dense + sparse collections need a BGE-M3 model")
    return embedder


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="bge-plugins", prog_name="bge")
def main() -> None:
    """BGE embedders, BGE-M3 hybrid search on Milvus and BGE rerankers from the command line."""
    _quiet_libraries()


# -- encode -------------------------------------------------------------------------------------


@main.command()
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
def encode(model: str, input_path: str, output: str, dense: bool, sparse: bool, colbert: bool, queries: bool,
           text_field: str, id_field: str, device: str | None, dtype: str | None, max_length: int | None,
           batch_tokens: int | None, chunk_size: int, quiet: bool) -> None:
    """Encode every text of INPUT (.txt: a text per line; .jsonl: objects with a text field; .parquet)
    with MODEL into OUTPUT, streaming: the input is never loaded whole, and OUTPUT appears only when
    complete."""
    from tqdm.auto import tqdm

    from bge_core.io import NpySink, ParquetSink

    with user_errors():
        kind = os.path.splitext(output)[1].lower()
        if kind not in (".parquet", ".npy"):
            raise InputError(f"{output}: the output must end in .parquet or .npy")
        if kind == ".npy" and (sparse or colbert or not dense):
            raise InputError(f"{output}: .npy holds dense vectors only; write .parquet for --sparse/--colbert")
        if not (dense or sparse or colbert):
            raise click.UsageError("nothing to encode: --no-dense without --sparse or --colbert")
        total = scan(input_path, text_field=text_field, id_field=id_field)  # bad input fails before any work
        embedder = load_embedder(model, device=device, dtype=dtype, max_length=max_length, batch_tokens=batch_tokens)
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


# -- index / search -----------------------------------------------------------------------------


def milvus_options(f: Any) -> Any:
    for option in reversed([
        click.option("--collection", required=True, help="Collection name."),
        click.option("--uri", default="./bge.db", show_default=True,
                     help="Milvus Lite file, or a Milvus server (http://host:19530)."),
        click.option("--token", default="", envvar="MILVUS_TOKEN", help="Server token (user:password or API key)."),
        click.option("--model", default=DEFAULT_MODEL, show_default=True, envvar="BGE_MODEL",
                     help="BGE-M3 hub id or directory (the one the collection was indexed with)."),
        click.option("--device", help="cpu, cuda, cuda:1… (default: first GPU, else CPU)."),
        click.option("--dtype", type=DTYPES, help="Default bf16 on GPU, fp32 on CPU."),
        click.option("--max-length", type=click.IntRange(min=1), help="Tokens per text (default: the model's)."),
    ]):
        f = option(f)
    return f


@main.command()
@click.argument("input_path", metavar="INPUT")
@milvus_options
@click.option("--text-field", default="text", show_default=True, help="Text key (.jsonl) or column (.parquet).")
@click.option("--id-field", default="id", show_default=True,
              help="Id key/column, if any; else the id is a hash of the text (so re-adding is a no-op).")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1),
              help="Texts embedded and written per batch.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def index(input_path: str, collection: str, uri: str, token: str, model: str, device: str | None,
          dtype: str | None, max_length: int | None, text_field: str, id_field: str, batch_size: int,
          quiet: bool) -> None:
    """Add the texts of INPUT to a BGE-M3 dense + sparse collection. Idempotent and resumable: rows
    are upserted by id, rows already stored are not embedded again, so re-running after a failure
    completes the collection without duplicates. For .jsonl, a line's other fields become metadata."""
    from tqdm.auto import tqdm

    bge_milvus = milvus()
    with user_errors():
        total = check_index_input(input_path, text_field, id_field)
        embedder = load_embedder(model, m3=True, device=device, dtype=dtype, max_length=max_length)
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


@main.command()
@click.argument("query")
@milvus_options
@click.option("--mode", type=click.Choice(["hybrid", "dense", "sparse"]), default="hybrid", show_default=True)
@click.option("--rerank", metavar="MODEL|colbert", help="Rerank the candidates: a reranker hub id or directory, "
              "or `colbert` (BGE-M3's multi-vector scores).")
@click.option("-k", "--top-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Hits.")
@click.option("--candidates", type=click.IntRange(min=1), help="Hits fetched for the reranker (default max(4k, 20)).")
@click.option("--filter", "expr", help="""Milvus filter, e.g. 'metadata["lang"] == "de"'.""")
@click.option("--json", "as_json", is_flag=True, help="JSON output for machines.")
def search(query: str, collection: str, uri: str, token: str, model: str, device: str | None, dtype: str | None,
           max_length: int | None, mode: str, rerank: str | None, k: int, candidates: int | None, expr: str | None,
           as_json: bool) -> None:
    """Search a collection made by `bge index` for QUERY; prints rank, score, id and a text excerpt."""
    bge_milvus = milvus()
    with user_errors():
        from bge_milvus.backend import is_lite, open_client

        if is_lite(uri) and not os.path.exists(uri):
            raise InputError(f"{uri}: no such Milvus Lite database (create it with `bge index`)")
        client = open_client(uri, token, "")
        try:
            if not client.has_collection(collection):
                raise InputError(f"{uri}: no collection {collection!r} (create it with `bge index`)")
        finally:
            client.close()
        embedder = load_embedder(model, m3=True, device=device, dtype=dtype, max_length=max_length)
        reranker = None
        if rerank is not None and rerank != "colbert":
            from bge_core import Reranker

            prepare_hub([rerank])
            reranker = Reranker(rerank, device=device, dtype=dtype)
        with bge_milvus.HybridCollection(collection, embedder, uri=uri, token=token, max_length=max_length) as coll:
            start = time.perf_counter()
            hits = coll.search(query, k=k, mode=mode, filter=expr, rerank=reranker or rerank, candidates=candidates)
            took = (time.perf_counter() - start) * 1e3
    if as_json:
        click.echo(json.dumps({
            "query": query, "collection": collection, "mode": mode, "rerank": rerank, "took_ms": round(took, 3),
            "hits": [{"rank": i, "id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata}
                     for i, h in enumerate(hits, start=1)],
        }, ensure_ascii=False))
        return
    how = mode + (f", reranked by {rerank}" if rerank else "")
    click.echo(f"{len(hits)} hits for {query!r} in {collection!r} ({how}) in {took:.1f} ms")
    rows = [[str(i), f"{h.score:.4f}", h.id, excerpt(h.text, 80)] for i, h in enumerate(hits, start=1)]
    click.echo(format_table(["rank", "score", "id", "text"], rows, right={0, 1}))


# -- demo ---------------------------------------------------------------------------------------


@main.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="BGE-M3 hub id or local directory.")
@click.option("--reranker", default=DEFAULT_RERANKER, show_default=True, help="Reranker hub id or local directory.")
@click.option("--db", default="./bge-demo.db", show_default=True, help="Milvus Lite file (its demo collection is "
              "rebuilt on every run).")
@click.option("--device", help="cpu, cuda, cuda:1… (default: first GPU, else CPU).")
@click.option("--dtype", type=DTYPES, help="Default bf16 on GPU, fp32 on CPU.")
@click.option("-k", "--top-k", "k", default=3, show_default=True, type=click.IntRange(min=1), help="Hits per query.")
@click.option("--candidates", default=10, show_default=True, type=click.IntRange(min=1),
              help="Hybrid-search hits passed to the reranker.")
@click.option("--fallback/--no-fallback", default=True, show_default=True,
              help="Use tiny RANDOM checkpoints when hub models cannot be downloaded.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (progress goes to stderr).")
def demo(model: str, reranker: str, db: str, device: str | None, dtype: str | None, k: int, candidates: int,
         fallback: bool, as_json: bool) -> None:
    """The main job end to end: index a bundled multilingual corpus (42 passages, 16 languages) into
    Milvus Lite with BGE-M3 dense + sparse, run multilingual queries in hybrid mode, rerank with a
    BGE reranker, and print the ranked results and timings.

    Without access to the Hugging Face hub it says so and runs the same pipeline on tiny random
    checkpoints (meaningless results; proves the installation)."""
    from bge_core.demo import report_json, run_demo

    with user_errors():
        report = run_demo(model, reranker, db=db, device=device, dtype=dtype, k=k, candidates=candidates,
                          fallback=fallback, echo=lambda line: click.echo(line, err=as_json))
    if as_json:
        click.echo(report_json(report))


if __name__ == "__main__":
    main()
