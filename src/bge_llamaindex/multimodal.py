"""`BGEVisualizedEmbedding`: Visualized-BGE (images, texts, image+text) as a LlamaIndex `MultiModalEmbedding`."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import Embedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.schema import ImageType

from bge_core import Embedder


class BGEVisualizedEmbedding(MultiModalEmbedding):
    """Images and texts in one vector space (Visualized-BGE), for LlamaIndex's multimodal indexes.

    Texts and queries are embedded as plain BGE does (no instruction, as the research model); images
    (paths or BytesIO) through the EVA-CLIP tower into BGE. `get_multimodal_embedding` embeds an image with a
    text (composed queries such as "this dress, in red"). Batches are one call into core each; async methods
    run in a worker thread.

    Args:
        model_name: the Visualized-BGE ``.pth`` file, or a loaded `bge_core.Embedder` of one.
        text_model: the BGE model it was trained from (hub id or directory); default the ``.pth``'s directory.
        device / dtype / batch_tokens / normalize: as `bge_core.Embedder`.

    Example:
        >>> embed = BGEVisualizedEmbedding(model_name="Visualized_base_en_v1.5.pth", text_model="BAAI/bge-base-en-v1.5")
        >>> len(embed.get_image_embedding("cat.jpg")) == len(embed.get_query_embedding("a cat"))
        True
    """

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(description="Path of the Visualized-BGE .pth file.")
    text_model: str | None = Field(default=None, description="Hub id or directory of its BGE text model.")
    device: str | None = Field(default=None, description="Torch device; default: first GPU, else CPU.")
    dtype: str | None = Field(default=None, description="bf16 / fp16 / fp32; default bf16 on CUDA, fp32 on CPU.")
    batch_tokens: int | None = Field(default=None, description="Token budget of one forward batch.")
    normalize: bool | None = Field(default=None, description="L2-normalise vectors; None = the model's default.")
    embed_batch_size: int = Field(default=64, gt=0, le=2048, description="Inputs per call into the core engine.")

    _embedder: Embedder = PrivateAttr()

    def __init__(self, model_name: str | Embedder, **kwargs: Any) -> None:
        if isinstance(model_name, Embedder):
            embedder = model_name if kwargs.get("normalize") is None else Embedder(
                model_name, normalize=kwargs["normalize"])
            name = model_name.name
        else:
            embedder = Embedder(str(model_name), text_model=kwargs.get("text_model"), device=kwargs.get("device"),
                                dtype=kwargs.get("dtype"), normalize=kwargs.get("normalize"),
                                batch_tokens=kwargs.get("batch_tokens"))
            name = str(model_name)
        if embedder.family != "visualized":
            raise ValueError(f"{name} is not a Visualized-BGE checkpoint; use BGEEmbedding for text models")
        super().__init__(model_name=name, **kwargs)
        self._embedder = embedder

    @classmethod
    def class_name(cls) -> str:
        return "BGEVisualizedEmbedding"

    @property
    def embedder(self) -> Embedder:
        """The core `Embedder` doing the work."""
        return self._embedder

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embedder.encode(texts).dense.tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._get_text_embeddings([query])[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return self._embedder.encode_images(list(img_file_paths)).dense.tolist()

    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._get_image_embeddings([img_file_path])[0]

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return await asyncio.to_thread(self._get_image_embedding, img_file_path)

    async def _aget_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_image_embeddings, img_file_paths)

    def get_multimodal_embedding(self, img_file_path: ImageType, text: str) -> Embedding:
        """One vector for an image together with a text (a composed query).

        Example:
            >>> embed.get_multimodal_embedding("dress.jpg", "the same dress in red")
        """
        return self._embedder.encode_multimodal([img_file_path], [text]).dense[0].tolist()
