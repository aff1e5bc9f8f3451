"""Haystack indexing and query pipelines: BGE-M3 dense + sparse into Milvus Lite, hybrid retrieval, BGE ranker.

    python examples/haystack_pipelines.py --query "Wer hat das Radium entdeckt?"
    python examples/haystack_pipelines.py --model ./bge-m3 --reranker ./bge-reranker-v2-m3 --device cpu

Indexing: BGEDocumentEmbedder → BGESparseDocumentEmbedder → DocumentWriter(MilvusDocumentStore).
The sparse embedder reuses the dense embedder's forward pass (same model): one forward per document.
Query: BGETextEmbedder + BGESparseTextEmbedder → MilvusHybridRetriever → BGERanker.
Both pipelines serialise to YAML (`pipeline.dumps()`) and load back with Haystack's defaults.

Needs: pip install 'bge-plugins[haystack,milvus]'
"""

from __future__ import annotations

import argparse

from haystack import Document, Pipeline
from haystack.components.writers import DocumentWriter
from haystack.utils import ComponentDevice
from milvus_haystack import MilvusDocumentStore, MilvusHybridRetriever

from bge_cli.demo import QUERIES, load_corpus
from bge_haystack import (
    BGEDocumentEmbedder,
    BGERanker,
    BGESparseDocumentEmbedder,
    BGESparseTextEmbedder,
    BGETextEmbedder,
)


def document_store(uri: str) -> MilvusDocumentStore:
    """A fresh Milvus collection with a dense and a sparse field, both searched by inner product."""
    return MilvusDocumentStore(
        collection_name="bge_haystack_example",
        connection_args={"uri": uri},
        consistency_level="Strong",
        index_params={"index_type": "FLAT", "metric_type": "IP", "params": {}},
        search_params={"metric_type": "IP", "params": {}},
        drop_old=True,  # rebuilt on every run
        sparse_vector_field="sparse",
        # Milvus Lite accepts only SPARSE_INVERTED_INDEX, and milvus-lite 3 no drop ratio.
        sparse_index_params={"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "IP"},
        sparse_search_params={"metric_type": "IP"},
    )


def indexing_pipeline(model: str, store: MilvusDocumentStore, device: ComponentDevice | None) -> Pipeline:
    pipe = Pipeline()
    pipe.add_component("dense", BGEDocumentEmbedder(model, device=device, progress_bar=False))
    pipe.add_component("sparse", BGESparseDocumentEmbedder(model, device=device, progress_bar=False))
    pipe.add_component("writer", DocumentWriter(store))
    pipe.connect("dense.documents", "sparse.documents")
    pipe.connect("sparse.documents", "writer.documents")
    return pipe


def query_pipeline(model: str, reranker: str, store: MilvusDocumentStore, device: ComponentDevice | None,
                   k: int = 3, candidates: int = 10) -> Pipeline:
    pipe = Pipeline()
    pipe.add_component("text", BGETextEmbedder(model, device=device))
    pipe.add_component("sparse_text", BGESparseTextEmbedder(model, device=device))
    pipe.add_component("retriever", MilvusHybridRetriever(document_store=store, top_k=candidates))
    pipe.add_component("ranker", BGERanker(reranker, device=device, top_k=k))
    pipe.connect("text.embedding", "retriever.query_embedding")
    pipe.connect("sparse_text.sparse_embedding", "retriever.query_sparse_embedding")
    pipe.connect("retriever.documents", "ranker.documents")
    return pipe


def ask(pipe: Pipeline, query: str) -> tuple[list[Document], list[Document]]:
    """(hybrid candidates, reranked documents) for `query`."""
    out = pipe.run({"text": {"text": query}, "sparse_text": {"text": query}, "ranker": {"query": query}},
                   include_outputs_from={"retriever"})
    return out["retriever"]["documents"], out["ranker"]["documents"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="BAAI/bge-m3", help="BGE-M3 hub id or local directory")
    parser.add_argument("--reranker", default="BAAI/bge-reranker-v2-m3", help="reranker hub id or local directory")
    parser.add_argument("--uri", default="./haystack_hybrid.db", help="Milvus Lite file or Milvus server URI")
    parser.add_argument("--device", default=None, help="cpu, cuda… (default: Haystack's default device)")
    parser.add_argument("--query", default=QUERIES[2][1])
    parser.add_argument("-k", type=int, default=3, help="documents kept by the ranker")
    args = parser.parse_args(argv)
    device = ComponentDevice.from_str(args.device) if args.device else None

    store = document_store(args.uri)
    try:
        docs = [Document(content=r.text, meta={"doc_id": r.id, **r.metadata}) for r in load_corpus()]
        written = indexing_pipeline(args.model, store, device).run({"dense": {"documents": docs}})
        candidates, ranked = ask(query_pipeline(args.model, args.reranker, store, device, k=args.k), args.query)
    finally:
        store.client.close()
    print(f"indexed {written['writer']['documents_written']} documents")
    print(f"query: {args.query}\n\nhybrid candidates: {[d.meta['doc_id'] for d in candidates]}\n")
    for rank, doc in enumerate(ranked, start=1):
        print(f"{rank}. {doc.score:.4f}  {doc.meta['doc_id']:<6} {doc.content[:90]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
