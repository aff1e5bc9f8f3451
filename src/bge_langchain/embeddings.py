"""`BGEEmbeddings`: BGE dense embeddings (v1.5, BGE-M3, LLM embedders) as a LangChain `Embeddings`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, PrivateAttr

from bge_core import Embedder
from bge_langchain._common import check_query, check_texts, core_model


class BGEEmbeddings(BaseModel, Embeddings):
    """BGE dense embeddings for LangChain, on the shared `bge_core` engine.

    `embed_query` puts the model's query instruction before the text (from the model registry,
    e.g. bge-*-en-v1.5's "Represent this sentence for searching relevant passages: "; none for
    BGE-M3); `embed_documents` does not. Vectors are lists of Python floats, L2-normalised unless
    ``normalize=False``. The async methods run in a worker thread and never block the event loop.

    With BGE-M3, a `BGEM3SparseEmbeddings` naming the same checkpoint (and device, dtype,
    max_length, with `normalize` left on) shares the weights, and a Milvus hybrid insert through
    both costs one forward per text.

    Example:
        .. code-block:: python

            from bge_langchain import BGEEmbeddings

            embeddings = BGEEmbeddings(model_name="BAAI/bge-small-en-v1.5")
            query_vector = embeddings.embed_query("What is BGE?")
            doc_vectors = embeddings.embed_documents(["BGE turns text into vectors."])
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    model_name: str | Path | Embedder = "BAAI/bge-m3"
    """Hub id, local checkpoint directory, or a loaded `bge_core.Embedder` (shares its weights; used as
    it is unless max_length, query_instruction, normalize or batch_tokens is given here)."""
    device: str | None = None
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``…; default: first GPU if any, else CPU."""
    dtype: str | None = None
    """``"bf16"``, ``"fp16"`` or ``"fp32"``; default bf16 on CUDA, fp32 on CPU."""
    batch_tokens: int | None = None
    """Token budget of one batch (default chosen per device by core)."""
    max_length: int | None = None
    """Tokens per text (default: the model's)."""
    query_instruction: str | None = None
    """Text put before queries. None: the registry's default for the model; ``""``: none."""
    normalize: bool | None = None
    """L2-normalise vectors. None: the model's default (normalised for every BGE model)."""
    truncate: bool = True
    """Cut over-long texts to `max_length`; False raises ValueError listing the indices."""
    show_progress: bool = False
    """Show a progress bar while encoding."""
    text_model: str | None = None
    """For a Visualized-BGE ``.pth`` `model_name` (images and texts): the BGE model it was trained from
    (hub id or directory); default the ``.pth``'s directory."""

    _embedder: Embedder = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        # Load now so a bad path or a non-embedding checkpoint fails at construction.
        self._embedder = core_model(
            Embedder, self.model_name, device=self.device, dtype=self.dtype, max_length=self.max_length,
            query_instruction=self.query_instruction, normalize=self.normalize, batch_tokens=self.batch_tokens,
            **({"text_model": self.text_model} if self.text_model is not None else {}),
        )

    @property
    def embedder(self) -> Embedder:
        """The core `Embedder` doing the work (shared with other adapters naming the same model)."""
        return self._embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (no query instruction).

        Args:
            texts: the documents; ``""`` is valid.

        Returns:
            One list of floats per text, in input order.

        Raises:
            TypeError: `texts` is a bare string, or an item is not a str (its index is named).
        """
        out = self._embedder.encode_documents(
            check_texts(texts), dense=True, truncate=self.truncate, show_progress=self.show_progress
        )
        return out.dense.tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed a query, with the model's query instruction in front.

        Raises:
            TypeError: `text` is not a str.
        """
        out = self._embedder.encode_queries(
            [check_query(text)], dense=True, truncate=self.truncate, show_progress=self.show_progress
        )
        return out.dense[0].tolist()

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        """Embed images (Visualized-BGE models), as LangChain's image-capable embeddings do: in the same space as
        `embed_query`'s texts, so a text query finds images.

        Args:
            uris: image file paths (bytes and PIL images are accepted too).

        Raises:
            ValueError: the model is a text model, or an image is unreadable, not an image or zero-size
                (its index is named).

        Example:
            >>> emb = BGEEmbeddings(model_name="Visualized_base_en_v1.5.pth", text_model="BAAI/bge-base-en-v1.5")
            >>> len(emb.embed_image(["cat.jpg"])[0])
            768
        """
        if isinstance(uris, (str, bytes)):
            raise TypeError(f"uris must be a list of image paths, got {type(uris).__name__}")
        return self._embedder.encode_images(list(uris), show_progress=self.show_progress).dense.tolist()

    async def aembed_image(self, uris: list[str]) -> list[list[float]]:
        """`embed_image` in a worker thread: the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.embed_image, uris)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """`embed_documents` in a worker thread: the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """`embed_query` in a worker thread: the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.embed_query, text)
