"""`bge search`: dense, sparse or hybrid search of a `bge index` collection, with an optional rerank."""

from __future__ import annotations

import json
import os
import time

import click

from bge_cli.common import ONE_SHOT, load_embedder, milvus, milvus_options, user_errors
from bge_cli.demo import prepare_hub
from bge_cli.io import InputError, excerpt, format_table


@click.command()
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
            reranker = Reranker(rerank, device=device, dtype=dtype, **ONE_SHOT)
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
