"""`bge eval`: retrieval metrics of a model (and reranker) on a BEIR or FlagEmbedding-custom dataset."""

from __future__ import annotations

from typing import Any

import click

from bge_cli.common import DTYPES, ONE_SHOT, load_embedder, milvus, user_errors, warm_up_if_large
from bge_cli.demo import prepare_hub
from bge_cli.io import InputError, atomic_output, format_table


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {text!r}", param_hint=option)
    return values


def _weights(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or not sum(values):
        raise click.BadParameter(f"expected three non-negative numbers DENSE,SPARSE,COLBERT, got {text!r}",
                                 param_hint="--weights")
    return values  # type: ignore[return-value]


def _dataset_notes(dataset: Any) -> list[str]:
    """What the reader left out or could not match, one line each (the documented skips)."""
    notes = []
    for split in dataset.splits.values():
        if split.skipped_queries:
            notes.append(f"{split.name}: skipped {split.skipped_queries} queries without judgements")
        if split.unknown_query_judgements:
            notes.append(f"{split.name}: ignored {split.unknown_query_judgements} judgements of unknown queries")
        if split.unknown_doc_judgements:
            notes.append(f"{split.name}: {split.unknown_doc_judgements} judgements name documents missing from the "
                         "corpus (they count as relevant and unfindable)")
    return notes


@click.command(name="eval")
@click.argument("dataset_dir", type=click.Path(file_okay=False))
@click.option("--model", required=True, envvar="BGE_MODEL", help="Embedder hub id or directory.")
@click.option("--reranker", help="Reranker hub id or directory: rescores the top --rerank-top-k hits of each mode.")
@click.option("--mode", type=click.Choice(["dense", "sparse", "colbert", "hybrid", "all"]), default="dense",
              show_default=True, help="Search mode (sparse, colbert, hybrid, all: BGE-M3 only).")
@click.option("--split", "splits", default="test", show_default=True, help="Split(s), comma-separated.")
@click.option("--k", "k_text", default="1,3,5,10,100", show_default=True, help="Metric cutoffs.")
@click.option("--top-k", default=1000, show_default=True, type=click.IntRange(min=1), help="Hits kept per query.")
@click.option("--rerank-top-k", default=100, show_default=True, type=click.IntRange(min=1),
              help="Hits the reranker rescores.")
@click.option("--ignore-identical-ids", is_flag=True, help="Drop hits whose doc id equals the query id.")
@click.option("--backend", type=click.Choice(["exact", "milvus"]), default="exact", show_default=True,
              help="exact: full search on the model's device; milvus: through a HybridCollection at --uri.")
@click.option("--uri", default="./bge_eval.db", show_default=True,
              help="Milvus Lite file or server (--backend milvus).")
@click.option("--weights", "weights_text", default="1,0.3,1", show_default=True,
              help="Hybrid weights DENSE,SPARSE,COLBERT (FlagEmbedding's weighted sum).")
@click.option("-o", "--output", help="Write the metrics as JSON (FlagEmbedding's nesting, plus the mode).")
@click.option("--markdown", help="Write FlagEmbedding-style Markdown tables.")
@click.option("--markdown-metrics", default="ndcg_at_10,recall_at_10", show_default=True,
              help="Metrics with a Markdown table.")
@click.option("--save-run", help="Write the TREC run (qid Q0 docid rank score tag); several runs: one file each.")
@click.option("--query-instruction", help="Text put before each query (default: the model's, e.g. bge-*-v1.5's; "
              "'' for none).")
@click.option("--device", help="cpu, cuda, cuda:1… (default: first GPU, else CPU).")
@click.option("--dtype", type=DTYPES, help="Default bf16 on GPU, fp32 on CPU.")
@click.option("--max-length", type=click.IntRange(min=1), help="Tokens per text (default: the model's).")
@click.option("--batch-tokens", type=click.IntRange(min=1), help="Token budget of one forward batch.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def eval_command(dataset_dir: str, model: str, reranker: str | None, mode: str, splits: str, k_text: str, top_k: int,
                 rerank_top_k: int, ignore_identical_ids: bool, backend: str, uri: str, weights_text: str,
                 output: str | None, markdown: str | None, markdown_metrics: str, save_run: str | None,
                 query_instruction: str | None, device: str | None, dtype: str | None, max_length: int | None,
                 batch_tokens: int | None, quiet: bool) -> None:
    """Evaluate MODEL on DATASET_DIR (BEIR: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv; or FlagEmbedding's
    custom layout: corpus.jsonl, SPLIT_queries.jsonl, SPLIT_qrels.jsonl) and print nDCG, MAP, recall,
    precision and MRR at each cutoff. Queries without judgements are skipped (their count is printed)."""
    import time

    from bge_eval import read_dataset
    from bge_eval.metrics import metric_names
    from bge_eval.runner import DEFAULT_TABLE_METRICS, evaluate, write_json, write_trec_run

    k_values = _int_list(k_text, "--k")
    weights = _weights(weights_text)
    modes = ["dense", "sparse", "colbert", "hybrid"] if mode == "all" else [mode]
    if backend == "milvus":
        milvus()  # a one-line hint when the Milvus extra is missing
        if "colbert" in modes:
            modes.remove("colbert")
            if mode == "colbert":
                raise click.UsageError("--backend milvus stores dense and sparse vectors only; use --backend exact "
                                       "for --mode colbert")
    table_metrics = [m.strip() for m in markdown_metrics.split(",") if m.strip()] or list(DEFAULT_TABLE_METRICS)
    unknown = [m for m in table_metrics if m not in metric_names(k_values)]
    with user_errors():
        if unknown:  # checked before the run, not after it
            raise InputError(f"--markdown-metrics: unknown metric(s) {unknown} for --k {k_text}")
        started = time.perf_counter()
        dataset = read_dataset(dataset_dir, [s.strip() for s in splits.split(",") if s.strip()])
        read_seconds = time.perf_counter() - started
        started = time.perf_counter()
        embedder = load_embedder(model, device=device, dtype=dtype, max_length=max_length,
                                 query_instruction=query_instruction, batch_tokens=batch_tokens)
        warm_up_if_large(embedder, sum(map(len, dataset.corpus_texts)))
        rerank_model = None
        if reranker is not None:
            from bge_core import Reranker

            prepare_hub([reranker])
            rerank_model = Reranker(reranker, device=device, dtype=dtype, batch_tokens=batch_tokens, **ONE_SHOT)
        load_seconds = time.perf_counter() - started
        result = evaluate(dataset, embedder, modes=modes, reranker=rerank_model, k_values=k_values, top_k=top_k,
                          rerank_top_k=rerank_top_k, ignore_identical_ids=ignore_identical_ids, backend=backend,
                          uri=uri, weights=weights, max_length=max_length, show_progress=not quiet)
        if output:
            with atomic_output(output) as tmp:
                write_json(result, tmp)
        if markdown:
            with atomic_output(markdown) as tmp, open(tmp, "w", encoding="utf-8") as handle:
                handle.write(result.to_markdown(table_metrics))
        written = []
        if save_run:
            for key, target in result.run_files(save_run).items():
                with atomic_output(target) as tmp:
                    write_trec_run(result.runs[key], tmp, result.run_tag(key))
                written.append(target)
    shown = [f"{name}_at_{k}" for name in ("ndcg", "recall", "mrr") for k in k_values if k in (10, max(k_values))]
    shown = list(dict.fromkeys(shown))
    rows = [[mode_name, reranker_name, split, *(f"{values[m]:.4f}" for m in shown)]
            for (mode_name, reranker_name, split), values in result.metrics.items()]
    for note in _dataset_notes(dataset):
        click.echo(note, err=True)
    click.echo(f"{result.model} on {dataset.name} ({dataset.layout}, {len(dataset.corpus_ids)} documents)")
    click.echo(format_table(["mode", "reranker", "split", *shown], rows, right=set(range(3, 3 + len(shown)))))
    for target in written:
        click.echo(f"run: {target}")
    stages = {"read data": read_seconds, "load models": load_seconds, **result.seconds}
    click.echo("seconds: " + ", ".join(f"{stage} {value:.2f}" for stage, value in stages.items()), err=True)
