"""`BGESparseTextEmbedder`: a query's BGE-M3 lexical (sparse) weights, as a Haystack component."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from haystack.core.component import component
from haystack.core.serialization import default_to_dict
from haystack.dataclasses import SparseEmbedding
from haystack.utils import ComponentDevice, Secret

from haystack_integrations.components.embedders.bge import _backend

if TYPE_CHECKING:
    from bge_core import Embedder


@component
class BGESparseTextEmbedder:
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
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BGESparseTextEmbedder:
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
                query_instruction=self.prefix, batch_tokens=self.batch_tokens,
            )

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
        _backend.check_text(text, type(self).__name__, "BGESparseDocumentEmbedder")
        self.warm_up()
        assert self._embedder is not None
        out = self._embedder.encode_queries(
            [text + self.suffix], dense=False, sparse=True, truncate=self.truncate, show_progress=self.progress_bar
        )
        return {"sparse_embedding": _backend.sparse_embedding(out.lexical_weights[0], self._embedder.pad_token_id)}

    @component.output_types(sparse_embedding=SparseEmbedding)
    async def run_async(self, text: str) -> dict[str, Any]:
        """`run` in a worker thread, so the event loop keeps going."""
        return await asyncio.to_thread(self.run, text)
