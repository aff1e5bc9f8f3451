"""`bge demo`: the main job end to end on the bundled corpus (the pipeline itself is `bge_cli.demo`)."""

from __future__ import annotations

import click

from bge_cli.common import DTYPES, user_errors
from bge_cli.demo import DEFAULT_MODEL, DEFAULT_RERANKER


@click.command()
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
    from bge_cli.demo import report_json, run_demo

    with user_errors():
        report = run_demo(model, reranker, db=db, device=device, dtype=dtype, k=k, candidates=candidates,
                          fallback=fallback, echo=lambda line: click.echo(line, err=as_json))
    if as_json:
        click.echo(report_json(report))
