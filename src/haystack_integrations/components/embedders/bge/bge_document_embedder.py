"""`BGEDocumentEmbedder`: dense BGE embeddings of Documents, as a Haystack component."""

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
class BGEDocumentEmbedder(_backend.BGEEmbedderComponent):
    """Sets each Document's `embedding` with a BGE model (dense BGE v1.5, BGE-M3, LLM embedders).

    The text embedded is the values of `meta_fields_to_embed` (those present and non-empty) and
    then the content, joined with `embedding_separator`. Input Documents are not changed: new ones
    are returned (`dataclasses.replace`). With BGE-M3, a `BGESparseDocumentEmbedder` of the same
    model run on the same Documents reuses this forward pass instead of running its own.

    Args:
        model: hub id, local checkpoint directory, or a loaded `bge_core.Embedder` (its weights,
            device and dtype are used; `to_dict` stores the directory it was loaded from).
        device: where the model runs; default: Haystack's default device (GPU if any).
        token: Hugging Face token for private or gated hub ids.
        prefix: passage instruction. ``None`` takes the model's own (none for BGE v1.5 and M3);
            ``""`` turns it off.
        suffix: text appended to each document's text.
        dtype: ``"bf16"`` / ``"fp16"`` / ``"fp32"``; default bf16 on CUDA, fp32 on CPU.
        max_length: tokens per text (default: the model's).
        batch_tokens: token budget of one engine batch (default chosen per device).
        normalize_embeddings: L2-normalise the vectors (BGE's retrieval setting).
        truncate: cut over-long text to `max_length`; ``False`` raises ValueError (listing the
            indices) instead.
        progress_bar: show a progress bar while encoding.
        meta_fields_to_embed: meta keys whose values are embedded with the content.
        embedding_separator: joins the meta values and the content.

    Example:
        >>> from haystack import Document
        >>> from haystack_integrations.components.embedders.bge import BGEDocumentEmbedder
        >>> embedder = BGEDocumentEmbedder(model="BAAI/bge-m3", meta_fields_to_embed=["title"])
        >>> docs = embedder.run([Document(content="Pandas eat bamboo.", meta={"title": "Pandas"})])["documents"]
        >>> len(docs[0].embedding)
        1024
    """

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
        normalize_embeddings: bool = True,
        truncate: bool = True,
        progress_bar: bool = True,
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
    ) -> None:
        self._configure(locals())

    def _embedder_options(self) -> dict[str, Any]:
        return {"normalize": self.normalize_embeddings}

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        """Embed Documents.

        Args:
            documents: the Documents (content ``None`` is embedded as ``""``).

        Returns:
            ``{"documents": ...}``: copies of the input with `embedding` set, in input order.

        Raises:
            TypeError: `documents` is not a list of Documents.
        """
        return {"documents": self._embed_documents(documents, "BGETextEmbedder")}

    @component.output_types(documents=list[Document])
    async def run_async(self, documents: list[Document]) -> dict[str, Any]:
        """`run` in a worker thread, so the event loop keeps going."""
        return await asyncio.to_thread(self.run, documents)
