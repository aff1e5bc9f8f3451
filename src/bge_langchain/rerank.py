"""`BGEReranker`: BGE cross-encoder and LLM rerankers as a LangChain `BaseDocumentCompressor`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr

from bge_core import Reranker
from bge_langchain._common import core_model


class BGEReranker(BaseDocumentCompressor):
    """Reorder documents by a BGE reranker's relevance to the query (for `ContextualCompressionRetriever`).

    Returns new `Document` objects, best first, cut to `top_n`: same ``page_content`` and ``id``,
    a deep copy of the metadata plus ``metadata["relevance_score"]``, the core reranker's score of
    the (query, document) pair. The documents passed in are never changed.

    Scores: with ``normalize=True`` (the default) the score is the sigmoid of the model's logit,
    in (0, 1) like other LangChain rerankers' ``relevance_score``; ``normalize=False`` gives the
    raw logit (FlagEmbedding's default). The order is the same either way.

    Example:
        .. code-block:: python

            from langchain_classic.retrievers import ContextualCompressionRetriever
            from bge_langchain import BGEReranker

            reranker = BGEReranker(model_name="BAAI/bge-reranker-v2-m3", top_n=3)
            retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=base)
            docs = retriever.invoke("what is a panda?")
            docs[0].metadata["relevance_score"]
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    model_name: str | Path | Reranker = "BAAI/bge-reranker-v2-m3"
    """Hub id, local directory, or a loaded `bge_core.Reranker`; cross-encoder or LLM reranker.

    A loaded Reranker is used as it is (its prompt and instructions kept; `normalize` below still
    decides the scores). Given with `max_length` or `batch_tokens`, a new core Reranker with default
    settings is made on the same weights."""
    top_n: int | None = Field(default=3, ge=0)
    """How many documents to return (None: all of them)."""
    normalize: bool = True
    """Sigmoid the scores into (0, 1); False keeps the model's raw logits."""
    device: str | None = None
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``…; default: first GPU if any, else CPU."""
    dtype: str | None = None
    """``"bf16"``, ``"fp16"`` or ``"fp32"``; default bf16 on CUDA, fp32 on CPU."""
    batch_tokens: int | None = None
    """Token budget of one batch (default chosen per device by core)."""
    max_length: int | None = None
    """Tokens per (query, document) pair (default: the model's, 512)."""
    truncate: bool = True
    """Cut over-long pairs to `max_length`; False raises ValueError listing the indices."""
    show_progress: bool = False
    """Show a progress bar while scoring."""

    _reranker: Reranker = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        # Load now so a bad path or a non-reranker checkpoint fails at construction.
        self._reranker = core_model(
            Reranker, self.model_name, device=self.device, dtype=self.dtype, max_length=self.max_length,
            batch_tokens=self.batch_tokens,
        )

    @property
    def reranker(self) -> Reranker:
        """The core `Reranker` doing the work."""
        return self._reranker

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Documents sorted by relevance to `query` (best first), cut to `top_n`, as scored copies.

        Args:
            documents: the candidates (not modified).
            query: the query they are scored against.
            callbacks: unused; part of LangChain's signature.

        Returns:
            New `Document` objects with ``metadata["relevance_score"]``.

        Raises:
            TypeError: `query` is not a str, or an item of `documents` is not a `Document` (index named).
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be str, got {type(query).__name__}")
        docs = list(documents)
        for i, doc in enumerate(docs):
            if not isinstance(doc, Document):
                raise TypeError(f"documents[{i}] must be a Document, got {type(doc).__name__}")
        hits = self._reranker.rerank(
            query, [doc.page_content for doc in docs], top_k=self.top_n, normalize=self.normalize,
            truncate=self.truncate, show_progress=self.show_progress,
        )
        return [_scored_copy(docs[hit.index], hit.score) for hit in hits]

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """`compress_documents` in a worker thread: the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.compress_documents, documents, query, callbacks)


def _scored_copy(doc: Document, score: float) -> Document:
    """A new Document with the same content and id, and its own metadata carrying the score."""
    return Document(
        page_content=doc.page_content, id=doc.id, metadata={**deepcopy(doc.metadata), "relevance_score": float(score)}
    )
