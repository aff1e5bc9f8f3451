"""A LlamaIndex hybrid query engine: BGE-M3 dense + sparse in a Milvus Lite vector store, BGE reranker postprocessor.

    python examples/llamaindex_hybrid_query.py --query "What do giant pandas eat?"
    python examples/llamaindex_hybrid_query.py --model ./bge-m3 --reranker ./bge-reranker-v2-m3 --device cpu

`BGEEmbedding` embeds the nodes, `BGEM3SparseEmbeddingFunction` (on the same loaded model, so the
sparse half costs no second forward) fills the store's sparse field, the query engine searches in
hybrid mode (RRF) and `BGEReranker` reorders the candidates. The engine's synthesizer is NoText,
so no LLM is needed: give it `get_response_synthesizer(llm=your_llm)` to get a written answer from
the same reranked nodes.

Needs: pip install 'bge-plugins[llamaindex,milvus]'
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.response_synthesizers.no_text import NoText
from llama_index.core.schema import NodeWithScore
from llama_index.vector_stores.milvus import MilvusVectorStore

from bge_cli.demo import QUERIES, load_corpus
from bge_llamaindex import BGEEmbedding, BGEM3SparseEmbeddingFunction, BGEReranker


@dataclass
class Answer:
    candidates: list[NodeWithScore]  # what hybrid retrieval found
    nodes: list[NodeWithScore]  # the query engine's source nodes, reranked


def build_index(model: str, uri: str, device: str | None = None) -> tuple[VectorStoreIndex, MilvusVectorStore]:
    """A fresh hybrid `MilvusVectorStore` with the demo corpus, and the index over it."""
    embed_model = BGEEmbedding(model, device=device)
    store = MilvusVectorStore(
        uri=uri,
        collection_name="bge_llamaindex_example",
        dim=embed_model.embedder.dim,
        overwrite=True,  # rebuilt on every run
        enable_sparse=True,
        sparse_embedding_function=BGEM3SparseEmbeddingFunction(embed_model.embedder),
        hybrid_ranker="RRFRanker",
        hybrid_ranker_params={"k": 60},
        similarity_metric="IP",
        consistency_level="Strong",
        use_async_client=False,  # the async client needs a running event loop
    )
    documents = [
        # Only the text is embedded (not "lang: en"), so dense and sparse read the same text: one forward.
        Document(text=r.text, id_=r.id, metadata=r.metadata, excluded_embed_metadata_keys=list(r.metadata))
        for r in load_corpus()
    ]
    storage = StorageContext.from_defaults(vector_store=store)
    return VectorStoreIndex.from_documents(documents, storage_context=storage, embed_model=embed_model), store


def ask(index: VectorStoreIndex, reranker: BGEReranker, query: str, candidates: int = 10) -> Answer:
    """Hybrid retrieval alone, then the query engine with the reranker as node postprocessor."""
    retriever = index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=candidates)
    # NoText returns the reranked source nodes without writing an answer (the MockLLM only keeps
    # LlamaIndex from resolving its default OpenAI LLM). For answers: get_response_synthesizer(llm=your_llm).
    engine = RetrieverQueryEngine(retriever, response_synthesizer=NoText(llm=MockLLM()), node_postprocessors=[reranker])
    return Answer(candidates=retriever.retrieve(query), nodes=engine.query(query).source_nodes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="BAAI/bge-m3", help="BGE-M3 hub id or local directory")
    parser.add_argument("--reranker", default="BAAI/bge-reranker-v2-m3", help="reranker hub id or local directory")
    parser.add_argument("--uri", default="./llamaindex_hybrid.db", help="Milvus Lite file or Milvus server URI")
    parser.add_argument("--device", default=None, help="cpu, cuda… (default: first GPU, else CPU)")
    parser.add_argument("--query", default=QUERIES[1][1])
    parser.add_argument("-k", type=int, default=3, help="nodes kept after reranking")
    args = parser.parse_args(argv)

    index, store = build_index(args.model, args.uri, args.device)
    try:
        answer = ask(index, BGEReranker(args.reranker, top_n=args.k, device=args.device), args.query)
    finally:
        store.client.close()
    print(f"query: {args.query}\n\nhybrid candidates: {[n.node.ref_doc_id for n in answer.candidates]}\n")
    for rank, hit in enumerate(answer.nodes, start=1):
        print(f"{rank}. {hit.score:.4f}  {hit.node.ref_doc_id:<6} {hit.node.get_content()[:90]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
