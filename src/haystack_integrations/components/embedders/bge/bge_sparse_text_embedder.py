"""`BGESparseTextEmbedder`: a query's BGE-M3 lexical (sparse) weights, as a Haystack component."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from haystack.core.component import component
from haystack.dataclasses import SparseEmbedding
from haystack.utils import ComponentDevice, Secret

from haystack_integrations.components.embedders.bge import _backend

if TYPE_CHECKING:
    from bge_core import Embedder


@component
class BGESparseTextEmbedder(_backend.BGEEmbedderComponent):
    """Embeds a query string as BGE-M3 lexical weights: a `SparseEmbedding` over token ids.

    Indices are sorted and every weight is > 0. A query with no lexical weight at all (``""``, or
    only special tokens) gets the same one-entry placeholder that `BGESparseDocumentEmbedder`
    stores for such documents (the padding id with weight 1e-6, see `bge_core.sparse.storable`):
    Milvus rejects empty sparse vectors in searches too, and the placeholder scores ~0 against
    every real document. With the same model and settings as a `BGETextEmbedder`, the two
    share one forward pass per query.

    Args:
        model: hub id, local checkpoint directory, or a loaded `bge_core.Embedder` of a BGE-M3
            checkpoint (its weights, device and dtype are used; `to_dict` stores its directory).
        device: where the model runs; default: Haystack's default device (GPU if any).
        token: Hugging Face token for private or gated hub ids.
        prefix: query instruction; ``None`` takes the model's own (none for BGE-M3), ``""`` none.
        suffix: text appended to the query.
        dtype: ``"bf16"`` / ``"fp16"`` / ``"fp32"``; default bf16 on CUDA, fp32 on CPU.
        max_length: tokens per text (default: the model's).
        batch_tokens: token budget of one engine batch (default chosen per device).
        truncate: cut over-long text to `max_length`; ``False`` raises ValueError instead.
        progress_bar: show a progress bar while encoding.

    Example:
        >>> from haystack_integrations.components.embedders.bge import BGESparseTextEmbedder
        >>> embedder = BGESparseTextEmbedder(model="BAAI/bge-m3")
        >>> embedder.run("What is BGE-M3?")["sparse_embedding"].indices
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
        progress_bar: bool = False,
    ) -> None:
        self._configure(locals())

    def _embedder_options(self) -> dict[str, Any]:
        return {"query_instruction": self.prefix}

    @component.output_types(sparse_embedding=SparseEmbedding)
    def run(self, text: str) -> dict[str, Any]:
        """Embed one query.

        Args:
            text: the query ("" is valid and gives the placeholder).

        Returns:
            ``{"sparse_embedding": SparseEmbedding}``.

        Raises:
            TypeError: `text` is not a string.
        """
        return {"sparse_embedding": self._embed_query(text, "BGESparseDocumentEmbedder")}

    @component.output_types(sparse_embedding=SparseEmbedding)
    async def run_async(self, text: str) -> dict[str, Any]:
        """`run` in a worker thread, so the event loop keeps going."""
        return await asyncio.to_thread(self.run, text)
