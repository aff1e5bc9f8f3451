"""`BGETextEmbedder`: a query's dense BGE embedding, as a Haystack component."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from haystack.core.component import component
from haystack.utils import ComponentDevice, Secret

from haystack_integrations.components.embedders.bge import _backend

if TYPE_CHECKING:
    from bge_core import Embedder


@component
class BGETextEmbedder(_backend.BGEEmbedderComponent):
    """Embeds a query string with a BGE model (dense BGE v1.5, BGE-M3, LLM embedders) on the `bge_core` engine.

    Use it in query pipelines next to `BGEDocumentEmbedder` (indexing). Both share one copy of the
    weights when they name the same model, device and dtype.

    Args:
        model: hub id (``"BAAI/bge-m3"``), local checkpoint directory, or a loaded `bge_core.Embedder`
            (its weights, device and dtype are used; the options below still apply; `to_dict`
            stores the directory it was loaded from).
        device: where the model runs; default: Haystack's default device (GPU if any).
        token: Hugging Face token for private or gated hub ids.
        prefix: the query instruction. ``None`` takes the model's own from the registry (e.g.
            bge-*-en-v1.5's "Represent this sentence for searching relevant passages: ", none for
            BGE-M3); ``""`` turns it off.
        suffix: text appended to the query.
        dtype: ``"bf16"`` / ``"fp16"`` / ``"fp32"``; default bf16 on CUDA, fp32 on CPU.
        max_length: tokens per text (default: the model's).
        batch_tokens: token budget of one engine batch (default chosen per device).
        normalize_embeddings: L2-normalise the vector (BGE's retrieval setting).
        truncate: cut over-long text to `max_length`; ``False`` raises ValueError instead.
        progress_bar: show a progress bar while encoding.

    Example:
        >>> from haystack_integrations.components.embedders.bge import BGETextEmbedder
        >>> embedder = BGETextEmbedder(model="BAAI/bge-small-en-v1.5")
        >>> embedder.warm_up()
        >>> len(embedder.run("What is BGE?")["embedding"])
        384
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
        progress_bar: bool = False,
    ) -> None:
        self._configure(locals())

    def _embedder_options(self) -> dict[str, Any]:
        return {"query_instruction": self.prefix, "normalize": self.normalize_embeddings}

    @component.output_types(embedding=list[float])
    def run(self, text: str) -> dict[str, Any]:
        """Embed one query.

        Args:
            text: the query ("" is valid).

        Returns:
            ``{"embedding": list[float]}``.

        Raises:
            TypeError: `text` is not a string.
        """
        return {"embedding": self._embed_query(text, "BGEDocumentEmbedder")}

    @component.output_types(embedding=list[float])
    async def run_async(self, text: str) -> dict[str, Any]:
        """`run` in a worker thread, so the event loop keeps going."""
        return await asyncio.to_thread(self.run, text)
