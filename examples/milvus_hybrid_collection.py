"""`bge_milvus.HybridCollection`: BGE-M3 dense + sparse on Milvus Lite, searched three ways, reranked two ways.

    python examples/milvus_hybrid_collection.py --query "¿Dónde desemboca el río Amazonas?"
    python examples/milvus_hybrid_collection.py --model ./bge-m3 --reranker ./bge-reranker-v2-m3 --device cpu

Adds the demo corpus (idempotent: run it twice, the collection keeps one row per passage), then
searches in dense, sparse and hybrid mode (RRF and weighted fusion), with a metadata filter, and
reranks the hybrid candidates with BGE-M3's ColBERT vectors and with a cross-encoder.
Any Milvus server works too: ``--uri http://localhost:19530``.

Needs: pip install 'bge-plugins[milvus]'
"""

from __future__ import annotations

import argparse

from bge_cli.demo import QUERIES, load_corpus
from bge_core import Reranker
from bge_milvus import RRF, Hit, HybridCollection, Weighted


def searches(docs: HybridCollection, reranker: Reranker, query: str, k: int) -> dict[str, list[Hit]]:
    """Every way of searching `docs` for `query`, by name."""
    return {
        "dense": docs.search(query, k=k, mode="dense"),
        "sparse": docs.search(query, k=k, mode="sparse"),
        "hybrid (RRF)": docs.search(query, k=k, mode="hybrid", ranker=RRF(60)),
        "hybrid (0.7 dense + 0.3 sparse)": docs.search(query, k=k, ranker=Weighted(dense=0.7, sparse=0.3)),
        "hybrid, English passages only": docs.search(query, k=k, filter='metadata["lang"] == "en"'),
        "hybrid + ColBERT rerank": docs.search(query, k=k, rerank="colbert", candidates=10),
        "hybrid + cross-encoder rerank": docs.search(query, k=k, rerank=reranker, candidates=10),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="BAAI/bge-m3", help="BGE-M3 hub id or local directory")
    parser.add_argument("--reranker", default="BAAI/bge-reranker-v2-m3", help="reranker hub id or local directory")
    parser.add_argument("--uri", default="./milvus_hybrid.db", help="Milvus Lite file or Milvus server URI")
    parser.add_argument("--device", default=None, help="cpu, cuda… (default: first GPU, else CPU)")
    parser.add_argument("--query", default=QUERIES[3][1])
    parser.add_argument("-k", type=int, default=3, help="hits per search")
    args = parser.parse_args(argv)

    corpus = load_corpus()
    with HybridCollection("bge_milvus_example", args.model, uri=args.uri, device=args.device) as docs:
        docs.add([r.text for r in corpus], ids=[r.id for r in corpus], metadata=[r.metadata for r in corpus])
        print(f"{docs.count()} rows in {args.uri}\nquery: {args.query}")
        results = searches(docs, Reranker(args.reranker, device=args.device), args.query, args.k)
    for name, hits in results.items():
        print(f"\n{name}")
        for rank, hit in enumerate(hits, start=1):
            print(f"  {rank}. {hit.score:8.4f}  {hit.id:<6} [{hit.metadata.get('lang')}] {hit.text[:80]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
