"""`BGESparseDocumentEmbedder`: BGE-M3 lexical (sparse) weights of Documents, as a Haystack component."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from haystack.core.component import component
from haystack.dataclasses import Document
from haystack.utils import ComponentDevice, Secret

from haystack_integrations.components.embedders.bge import _backend

if TYPE_CHECKING:
    from bge_core import Embedder


@component
class BGESparseDocumentEmbedder(_backend.BGEEmbedderComponent):
    """Sets each Document's `sparse_embedding` to its BGE-M3 lexical weights.

    Indices are sorted and every weight is > 0. A Document with no lexical weight at all (empty
    content, or only special tokens) gets one placeholder entry instead of an empty vector — the
    padding id with weight 1e-6 (`bge_core.sparse.storable`) — because Milvus rejects empty sparse
    rows. The padding id never occurs in a query's weights, so the placeholder adds 0 to every
    sparse score, and the Document still takes part in dense and hybrid search.

    Input Documents are not changed: new ones are returned (`dataclasses.replace`). Run next to a
    `BGEDocumentEmbedder` of the same model on the same Documents, the two share one forward pass.

    Args:
        model: hub id, local checkpoint directory, or a loaded `bge_core.Embedder` of a BGE-M3
            checkpoint (its weights, device and dtype are used; `to_dict` stores its directory).
        device: where the model runs; default: Haystack's default device (GPU if any).
        token: Hugging Face token for private or gated hub ids.
        prefix: passage instruction; ``None`` takes the model's own (none for BGE-M3), ``""`` none.
        suffix: text appended to each document's text.
        dtype: ``"bf16"`` / ``"fp16"`` / ``"fp32"``; default bf16 on CUDA, fp32 on CPU.
        max_length: tokens per text (default: the model's).
        batch_tokens: token budget of one engine batch (default chosen per device).
        truncate: cut over-long text to `max_length`; ``False`` raises ValueError instead.
        progress_bar: show a progress bar while encoding.
        meta_fields_to_embed: meta keys whose values are embedded with the content.
        embedding_separator: joins the meta values and the content.

    Example:
        >>> from haystack import Document
        >>> from haystack_integrations.components.embedders.bge import BGESparseDocumentEmbedder
        >>> embedder = BGESparseDocumentEmbedder(model="BAAI/bge-m3")
        >>> docs = embedder.run([Document(content="Pandas eat bamboo.")])["documents"]
        >>> docs[0].sparse_embedding.indices
        [...]
    """

    _sparse = True

    def __init__(
        self,
        model: str | os.PathLike[str] | Embedder = "BAAI/bge-m3",
        *,
        device: ComponentDevice | None = None,
        token: Secret | None = Secret.from_env_var(["HF_API_TOKEN", "HF_TOKEN"], strict=False),
        prefix: str | None = None,
        suffix: str = "",
        dtype: str | None = None,
        max_length: int | None = None,
        batch_tokens: int | None = None,
        truncate: bool = True,
        progress_bar: bool = True,
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
    ) -> None:
        self._configure(locals())

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        """Sparse-embed Documents.

        Args:
            documents: the Documents (content ``None`` is embedded as ``""``).

        Returns:
            ``{"documents": ...}``: copies of the input with `sparse_embedding` set, in input order.

        Raises:
            TypeError: `documents` is not a list of Documents.
        """
        return {"documents": self._embed_documents(documents, "BGESparseTextEmbedder")}

    @component.output_types(documents=list[Document])
    async def run_async(self, documents: list[Document]) -> dict[str, Any]:
        """`run` in a worker thread, so the event loop keeps going."""
        return await asyncio.to_thread(self.run, documents)
