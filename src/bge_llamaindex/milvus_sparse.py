"""`BGEM3SparseEmbeddingFunction`: BGE-M3 lexical weights for LlamaIndex's `MilvusVectorStore`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from llama_index.vector_stores.milvus.utils import BaseSparseEmbeddingFunction

from bge_llamaindex.embedding import build_embedder

if TYPE_CHECKING:
    from bge_core import Embedder

DEFAULT_MODEL = "BAAI/bge-m3"


class BGEM3SparseEmbeddingFunction(BaseSparseEmbeddingFunction):
    """BGE-M3 sparse vectors (``{token_id: weight}``) for `MilvusVectorStore(enable_sparse=True)`.

    Every list is encoded in one call into the core engine. The model is loaded once per process
    and shared: a `BGEEmbedding` on the same checkpoint (same `max_length`), or one whose
    ``.embedder`` is passed as `model_name`, uses the same weights, and texts it has just embedded
    dense come back from the same forward with no second one. (The store sends ``node.text``, the
    embedding gets ``node.get_content(MetadataMode.EMBED)``: nodes with embedded metadata differ
    and then cost a forward each.)

    Empty rows: weights are > 0 (zeros dropped). A text with no lexical weight (``""`` or special
    tokens only) would give an empty row, which Milvus rejects; it is sent as one placeholder
    entry, the padding token with weight `bge_core.sparse.EMPTY_PLACEHOLDER_WEIGHT` (1e-6), via
    `bge_core.sparse.storable`. The padding token never occurs in a real row, so the placeholder
    adds nothing to any score between real texts.

    Args:
        model_name: hub id, local BGE-M3 directory, or a loaded `bge_core.Embedder`.
        device / dtype / batch_tokens / max_length: as for `BGEEmbedding` (None = defaults, or
            the loaded `Embedder`'s own settings when one is given).
        truncate: cut over-long texts (default); False raises ValueError listing them.

    Example:
        >>> from llama_index.vector_stores.milvus import MilvusVectorStore
        >>> from bge_llamaindex import BGEEmbedding, BGEM3SparseEmbeddingFunction
        >>> embed_model = BGEEmbedding("BAAI/bge-m3")
        >>> store = MilvusVectorStore(
        ...     uri="./hybrid.db", dim=1024, enable_sparse=True, overwrite=True,
        ...     sparse_embedding_function=BGEM3SparseEmbeddingFunction(embed_model.embedder),
        ... )
        >>> BGEM3SparseEmbeddingFunction("BAAI/bge-m3").encode_queries(["what is BGE-M3?"])[0]
    """

    def __init__(
        self,
        model_name: str | Embedder = DEFAULT_MODEL,
        *,
        device: str | list[str] | None = None,
        dtype: str | None = None,
        batch_tokens: int | None = None,
        max_length: int | None = None,
        truncate: bool = True,
    ) -> None:
        options = {"device": device, "dtype": dtype, "batch_tokens": batch_tokens, "max_length": max_length}
        self.embedder, self.model_name, resolved = build_embedder(model_name, options)
        if self.embedder.family != "m3":
            raise ValueError(f"{self.model_name} is a {self.embedder.family} model; sparse vectors need BGE-M3")
        self.device: str | list[str] | None = resolved["device"]
        self.dtype: str | None = resolved["dtype"]
        self.batch_tokens: int | None = resolved["batch_tokens"]
        self.max_length: int | None = resolved["max_length"]
        self.truncate = truncate

    def encode_documents(self, documents: list[str]) -> list[dict[int, float]]:
        """Sparse vectors of documents (no instruction), in input order; never an empty row.

        Example:
            >>> BGEM3SparseEmbeddingFunction("BAAI/bge-m3").encode_documents(["a", ""])[1]
            {1: 1e-06}
        """
        out = self.embedder.encode_documents(list(documents), dense=False, sparse=True, truncate=self.truncate)
        return self._storable(out.lexical_weights)

    def encode_queries(self, queries: list[str]) -> list[dict[int, float]]:
        """Sparse vectors of queries (the model's query instruction, none for BGE-M3).

        Example:
            >>> BGEM3SparseEmbeddingFunction("BAAI/bge-m3").encode_queries(["what is BGE?"])
        """
        out = self.embedder.encode_queries(list(queries), dense=False, sparse=True, truncate=self.truncate)
        return self._storable(out.lexical_weights)

    async def async_encode_documents(self, documents: list[str]) -> list[dict[int, float]]:
        return await asyncio.to_thread(self.encode_documents, documents)

    async def async_encode_queries(self, queries: list[str]) -> list[dict[int, float]]:
        return await asyncio.to_thread(self.encode_queries, queries)

    def _storable(self, rows: list[Mapping[int, float]]) -> list[dict[int, float]]:
        from bge_core.sparse import storable

        pad = self.embedder.pad_token_id
        # Plain ints and floats: pymilvus rejects numpy scalars in sparse rows.
        return [{int(k): float(v) for k, v in storable(row, pad).items()} for row in rows]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_name={self.model_name!r}, device={self.device!r})"
