"""`BGEM3SparseEmbeddings`: BGE-M3 lexical weights as a langchain-milvus `BaseSparseEmbedding`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr

from bge_core import Embedder
from bge_core.sparse import storable
from bge_langchain._common import check_query, check_texts, core_model

try:
    from langchain_milvus.utils.sparse import BaseSparseEmbedding
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "BGEM3SparseEmbeddings needs langchain-milvus: pip install 'bge-plugins[langchain]'"
    ) from error


class BGEM3SparseEmbeddings(BaseModel, BaseSparseEmbedding):
    """BGE-M3 sparse (lexical) embeddings for a langchain-milvus `Milvus` store.

    Each text becomes ``{token_id: weight}`` with Python ints and floats; zero weights and special
    tokens are dropped. Because this class exists to feed Milvus, which rejects an empty sparse row
    (and pymilvus takes ``{}`` for a dense vector), a text with no weights (``""``, or only special
    tokens) gives the one-entry placeholder of `bge_core.sparse.storable`:
    ``{pad_token_id: 1e-06}``. The pad id never occurs in real weights, so the placeholder adds
    nothing to any score; queries get the same treatment so an empty query still searches.

    Used next to a `BGEEmbeddings` naming the same checkpoint (and device, dtype, max_length),
    both share one loaded model, and a hybrid ``Milvus.add_texts`` runs the model once per text:
    the dense call computes the lexical weights as well, and this class finds them in core's memo.

    Example:
        .. code-block:: python

            from langchain_milvus import Milvus
            from bge_langchain import BGEEmbeddings, BGEM3SparseEmbeddings

            dense = BGEEmbeddings(model_name="BAAI/bge-m3")
            sparse = BGEM3SparseEmbeddings(model_name="BAAI/bge-m3")
            store = Milvus(
                embedding_function=[dense, sparse],
                vector_field=["dense", "sparse"],
                index_params=[
                    {"index_type": "FLAT", "metric_type": "IP"},
                    {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "IP"},
                ],
                search_params=[{"metric_type": "IP", "params": {}}, {"metric_type": "IP", "params": {}}],
                connection_args={"uri": "./milvus.db"},
                auto_id=True,
            )
            store.add_texts(["BGE-M3 is multilingual."])
            store.similarity_search("multilingual embeddings", k=1)
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    model_name: str | Path | Embedder = "BAAI/bge-m3"
    """Hub id, local BGE-M3 directory, or a loaded `bge_core.Embedder` of BGE-M3 (shares its weights)."""
    device: str | None = None
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``…; default: first GPU if any, else CPU."""
    dtype: str | None = None
    """``"bf16"``, ``"fp16"`` or ``"fp32"``; default bf16 on CUDA, fp32 on CPU."""
    batch_tokens: int | None = None
    """Token budget of one batch (default chosen per device by core)."""
    max_length: int | None = None
    """Tokens per text (default: the model's, 8192 for BGE-M3)."""
    truncate: bool = True
    """Cut over-long texts to `max_length`; False raises ValueError listing the indices."""
    show_progress: bool = False
    """Show a progress bar while encoding."""

    _embedder: Embedder = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._embedder = core_model(
            Embedder, self.model_name, device=self.device, dtype=self.dtype, max_length=self.max_length,
            batch_tokens=self.batch_tokens,
        )
        if self._embedder.family != "m3":
            raise ValueError(
                f"{self._embedder.loaded.path} is a {self._embedder.family} model without a sparse head; "
                "BGEM3SparseEmbeddings needs a BGE-M3 checkpoint"
            )

    @property
    def embedder(self) -> Embedder:
        """The core `Embedder` doing the work (shared with other adapters naming the same model)."""
        return self._embedder

    def embed_documents(self, texts: list[str]) -> list[dict[int, float]]:
        """Lexical weights of documents, one Milvus-storable dict per text.

        Raises:
            TypeError: `texts` is a bare string, or an item is not a str (its index is named).
        """
        out = self._embedder.encode_documents(
            check_texts(texts), dense=False, sparse=True, truncate=self.truncate, show_progress=self.show_progress
        )
        return [self._storable(weights) for weights in out.lexical_weights]

    def embed_query(self, query: str) -> dict[int, float]:
        """Lexical weights of a query (BGE-M3 has no query instruction).

        Raises:
            TypeError: `query` is not a str.
        """
        out = self._embedder.encode_queries(
            [check_query(query)], dense=False, sparse=True, truncate=self.truncate, show_progress=self.show_progress
        )
        return self._storable(out.lexical_weights[0])

    async def aembed_documents(self, texts: list[str]) -> list[dict[int, float]]:
        """`embed_documents` in a worker thread: the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, query: str) -> dict[int, float]:
        """`embed_query` in a worker thread: the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.embed_query, query)

    def _storable(self, weights: dict[int, float]) -> dict[int, float]:
        # Python scalars: pymilvus rejects numpy ones.
        row = storable(weights, placeholder_id=self._embedder.pad_token_id)
        return {int(token): float(weight) for token, weight in row.items()}
