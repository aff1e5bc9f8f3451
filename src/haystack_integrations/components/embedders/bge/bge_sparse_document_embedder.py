"""`BGESparseDocumentEmbedder`: BGE-M3 lexical (sparse) weights of Documents, as a Haystack component."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from haystack.core.component import component
from haystack.core.serialization import default_to_dict
from haystack.dataclasses import Document
from haystack.utils import ComponentDevice, Secret

from haystack_integrations.components.embedders.bge import _backend

if TYPE_CHECKING:
    from bge_core import Embedder


@component
class BGESparseDocumentEmbedder:
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
        _backend.check_model(model, "Embedder")
        self.model = model
        self.device = _backend.component_device(model, device)
        self.token = token
        self.prefix = prefix
        self.suffix = suffix
        self.dtype = _backend.component_dtype(model, dtype)
        self.max_length = max_length
        self.batch_tokens = batch_tokens
        self.truncate = truncate
        self.progress_bar = progress_bar
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator
        self._embedder: Embedder | None = None

    def to_dict(self) -> dict[str, Any]:
        """Serialize the component (a core object as `model` is stored as its checkpoint directory)."""
        return default_to_dict(
            self,
            model=_backend.model_reference(self.model),
            device=self.device.to_dict(),
            token=self.token.to_dict() if self.token is not None else None,
            prefix=self.prefix,
            suffix=self.suffix,
            dtype=self.dtype,
            max_length=self.max_length,
            batch_tokens=self.batch_tokens,
            truncate=self.truncate,
            progress_bar=self.progress_bar,
            meta_fields_to_embed=self.meta_fields_to_embed,
            embedding_separator=self.embedding_separator,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BGESparseDocumentEmbedder:
        """Rebuild the component from `to_dict`'s output."""
        return _backend.from_dict(cls, data)

    def warm_up(self) -> None:
        """Load the model once; later calls return at once.

        Raises:
            ValueError: the model is not BGE-M3 (the only BGE model with a sparse head).
        """
        if self._embedder is None:
            self._embedder = _backend.load_embedder(
                self.model, self.device, self.dtype, self.token, sparse=True, max_length=self.max_length,
                batch_tokens=self.batch_tokens,
            )

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
        _backend.check_documents(documents, type(self).__name__, "To embed a string, use BGESparseTextEmbedder.")
        if not documents:
            return {"documents": []}
        self.warm_up()
        assert self._embedder is not None
        texts = _backend.document_texts(documents, self.meta_fields_to_embed, self.embedding_separator, self.suffix)
        out = _backend.encode_documents(
            self._embedder, texts, self.prefix, dense=False, sparse=True, truncate=self.truncate,
            show_progress=self.progress_bar,
        )
        pad = self._embedder.pad_token_id
        return {
            "documents": [
                replace(doc, sparse_embedding=_backend.sparse_embedding(weights, pad))
                for doc, weights in zip(documents, out.lexical_weights)
            ]
        }

    @component.output_types(documents=list[Document])
    async def run_async(self, documents: list[Document]) -> dict[str, Any]:
        """`run` in a worker thread, so the event loop keeps going."""
        return await asyncio.to_thread(self.run, documents)
