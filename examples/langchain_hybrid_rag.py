"""Hybrid RAG retrieval with LangChain: BGE-M3 dense + sparse in Milvus Lite, reranked by a BGE reranker.

    python examples/langchain_hybrid_rag.py --query "What do giant pandas eat?"
    python examples/langchain_hybrid_rag.py --model ./bge-m3 --reranker ./bge-reranker-v2-m3 --device cpu

A langchain-milvus store with two vector fields holds the demo corpus: dense vectors from
`BGEEmbeddings`, lexical weights from `BGEM3SparseEmbeddings` (both on one BGE-M3: one forward per
text). A LangChain runnable retrieves candidates with reciprocal-rank fusion of both fields, reranks
them with `BGEReranker`, and fills a RAG prompt with the best passages. The prompt is printed: pipe
it into the chat model of your choice (`chain | llm`).

Needs: pip install 'bge-plugins[langchain,milvus]'
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from langchain_milvus import Milvus

from bge_cli.demo import QUERIES, load_corpus
from bge_langchain import BGEEmbeddings, BGEM3SparseEmbeddings, BGEReranker

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question using only the numbered passages below. Cite passage numbers.\n\n{context}"),
    ("human", "{question}"),
])


class _NoAsyncClientWarning(logging.Filter):
    """Drops langchain-milvus's warning that it could not make an async client outside an event loop."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "AsyncMilvusClient" not in record.getMessage()


@contextlib.contextmanager
def sync_store_construction() -> Iterator[None]:
    """langchain-milvus makes an async client beside the sync one in `Milvus(...)`; outside a running event
    loop that fails and it logs a warning on every construction. This script only calls the synchronous
    methods, so the warning says nothing here: it is filtered while the store is made, and only then."""
    store_logger = logging.getLogger("langchain_milvus.vectorstores.milvus")
    quiet = _NoAsyncClientWarning()
    store_logger.addFilter(quiet)
    try:
        yield
    finally:
        store_logger.removeFilter(quiet)


def build_store(model: str, uri: str, device: str | None = None) -> Milvus:
    """A fresh hybrid (dense + sparse) langchain-milvus store holding the demo corpus."""
    dense = BGEEmbeddings(model_name=model, device=device)
    sparse = BGEM3SparseEmbeddings(model_name=model, device=device)  # same weights as `dense`
    with sync_store_construction():
        store = Milvus(
            embedding_function=[dense, sparse],
            vector_field=["dense", "sparse"],
            # Inner product on both fields (BGE vectors are normalised); explicit sparse parameters
            # because Milvus Lite accepts only SPARSE_INVERTED_INDEX and no drop ratio.
            index_params=[
                {"index_type": "FLAT", "metric_type": "IP"},
                {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "IP"},
            ],
            search_params=[{"metric_type": "IP", "params": {}}, {"metric_type": "IP", "params": {}}],
            connection_args={"uri": uri},
            collection_name="bge_langchain_example",
            auto_id=True,
            drop_old=True,  # rebuilt on every run
        )
    corpus = load_corpus()
    store.add_texts([r.text for r in corpus], metadatas=[{"doc_id": r.id, **r.metadata} for r in corpus])
    return store


def build_chain(store: Milvus, reranker: BGEReranker, candidates: int = 10) -> Runnable:
    """question → {"question", "candidates", "docs" (reranked), "prompt"}."""
    # fetch_k: hits taken from each field before fusion (langchain-milvus's default is 4).
    retriever = store.as_retriever(
        search_kwargs={"k": candidates, "fetch_k": 2 * candidates, "ranker_type": "rrf", "ranker_params": {"k": 60}}
    )

    def rerank(inputs: dict[str, Any]) -> list[Document]:
        return reranker.compress_documents(inputs["candidates"], inputs["question"])

    def prompt(inputs: dict[str, Any]) -> str:
        context = "\n".join(f"[{i}] {d.page_content}" for i, d in enumerate(inputs["docs"], start=1))
        return PROMPT.invoke({"context": context, "question": inputs["question"]}).to_string()

    return (
        {"question": RunnablePassthrough(), "candidates": retriever}
        | RunnablePassthrough.assign(docs=RunnableLambda(rerank))
        | RunnablePassthrough.assign(prompt=RunnableLambda(prompt))
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="BAAI/bge-m3", help="BGE-M3 hub id or local directory")
    parser.add_argument("--reranker", default="BAAI/bge-reranker-v2-m3", help="reranker hub id or local directory")
    parser.add_argument("--uri", default="./langchain_hybrid.db", help="Milvus Lite file or Milvus server URI")
    parser.add_argument("--device", default=None, help="cpu, cuda… (default: first GPU, else CPU)")
    parser.add_argument("--query", default=QUERIES[0][1])
    parser.add_argument("-k", type=int, default=3, help="passages kept after reranking")
    args = parser.parse_args(argv)

    store = build_store(args.model, args.uri, args.device)
    try:
        reranker = BGEReranker(model_name=args.reranker, device=args.device, top_n=args.k)
        result = build_chain(store, reranker).invoke(args.query)
    finally:
        store.client.close()
    print(f"query: {args.query}\n\nhybrid candidates: {[d.metadata['doc_id'] for d in result['candidates']]}\n")
    for rank, doc in enumerate(result["docs"], start=1):
        print(f"{rank}. {doc.metadata['relevance_score']:.4f}  {doc.metadata['doc_id']:<6} {doc.page_content[:90]}")
    print(f"\nRAG prompt for your LLM:\n{result['prompt']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
