"""`BGEImageDocumentEmbedder`: Visualized-BGE embeddings of image Documents, as a Haystack component."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from haystack.core.component import component
from haystack.core.serialization import default_from_dict, default_to_dict
from haystack.dataclasses import Document
from haystack.utils import ComponentDevice

if TYPE_CHECKING:
    from bge_core import Embedder


@component
class BGEImageDocumentEmbedder:
    """Sets each image Document's `embedding` with a Visualized-BGE model, in the same space as its texts.

    The image of a Document is its `blob` (a ByteStream of the file's bytes) if set, else the file named by
    ``meta[file_path_meta_field]`` (under `root_path` if given), as Haystack's image embedders read them. With
    `text_meta_field`, ``meta[text_meta_field]`` is embedded together with the image (a composed vector).
    Input Documents are not changed: copies are returned (`dataclasses.replace`). Texts are embedded by
    `BGETextEmbedder` on the same model (pass the loaded ``embedder`` to share the weights).

    Args:
        model: the Visualized-BGE ``.pth`` file, or a loaded `bge_core.Embedder` of one.
        text_model: the BGE model the ``.pth`` was trained from (hub id or directory); default its directory.
        device: where the model runs; default Haystack's default device.
        dtype: ``"bf16"`` / ``"fp16"`` / ``"fp32"``; default bf16 on CUDA, fp32 on CPU.
        file_path_meta_field: meta key holding the image path.
        root_path: folder the paths are relative to.
        text_meta_field: meta key of a text to embed with the image (None: the image alone).
        progress_bar: show a progress bar while encoding.

    Example:
        >>> from haystack import Document
        >>> embedder = BGEImageDocumentEmbedder(model="Visualized_base_en_v1.5.pth", text_model="BAAI/bge-base-en-v1.5")
        >>> embedder.warm_up()
        >>> docs = embedder.run([Document(content="a cat", meta={"file_path": "cat.jpg"})])["documents"]
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Embedder,
        *,
        text_model: str | None = None,
        device: ComponentDevice | None = None,
        dtype: str | None = None,
        file_path_meta_field: str = "file_path",
        root_path: str | None = None,
        text_meta_field: str | None = None,
        progress_bar: bool = False,
    ) -> None:
        from bge_core import Embedder

        self._core: Embedder | None = model if isinstance(model, Embedder) else None
        self.model = model.name if isinstance(model, Embedder) else os.fspath(model)
        self.text_model = text_model
        self.device = device if self._core is None else ComponentDevice.from_str(str(self._core.device))
        self.dtype = dtype if self._core is None else self._core.dtype
        self.file_path_meta_field = file_path_meta_field
        self.root_path = root_path
        self.text_meta_field = text_meta_field
        self.progress_bar = progress_bar

    def warm_up(self) -> None:
        """Load the model (once; later calls do nothing)."""
        if self._core is None:
            from bge_core import Embedder

            device = ComponentDevice.resolve_device(self.device).to_torch_str()
            self._core = Embedder(self.model, text_model=self.text_model, device=device, dtype=self.dtype)
        if self._core.family != "visualized":
            raise ValueError(f"{self.model} is not a Visualized-BGE checkpoint; use BGEDocumentEmbedder for text")

    @property
    def embedder(self) -> Embedder:
        """The core `Embedder` (after `warm_up`)."""
        if self._core is None:
            raise RuntimeError("BGEImageDocumentEmbedder: call warm_up() first")
        return self._core

    def to_dict(self) -> dict[str, Any]:
        """Serialize the component (the model by its path)."""
        return default_to_dict(
            self, model=self.model, text_model=self.text_model,
            device=None if self.device is None else self.device.to_dict(), dtype=self.dtype,
            file_path_meta_field=self.file_path_meta_field, root_path=self.root_path,
            text_meta_field=self.text_meta_field, progress_bar=self.progress_bar,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BGEImageDocumentEmbedder:
        """Rebuild a component from `to_dict`'s output."""
        params = data.get("init_parameters", {})
        if params.get("device") is not None:
            params["device"] = ComponentDevice.from_dict(params["device"])
        return default_from_dict(cls, data)

    def _image_of(self, index: int, document: Any) -> Any:
        if not isinstance(document, Document):
            raise TypeError(f"documents[{index}] must be a haystack Document, got {type(document).__name__}")
        if document.blob is not None:
            return document.blob.data
        path = document.meta.get(self.file_path_meta_field)
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"documents[{index}] has no image: no blob and no meta[{self.file_path_meta_field!r}]")
        return os.path.join(self.root_path, path) if self.root_path else path

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        """Embed image Documents.

        Returns:
            ``{"documents": ...}``: copies of the input with `embedding` set, in input order.

        Raises:
            TypeError / ValueError: a Document is not one, has no image, or its image is unreadable (index named).
        """
        if not isinstance(documents, list):
            raise TypeError(f"documents must be a list of Documents, got {type(documents).__name__}")
        self.warm_up()
        images = [self._image_of(i, d) for i, d in enumerate(documents)]
        if self.text_meta_field is None:
            vectors = self.embedder.encode_images(images, show_progress=self.progress_bar).dense
        else:
            texts = [str(d.meta.get(self.text_meta_field) or "") for d in documents]
            vectors = self.embedder.encode_multimodal(images, texts, show_progress=self.progress_bar).dense
        return {"documents": [replace(d, embedding=v.tolist()) for d, v in zip(documents, vectors)]}

    @component.output_types(documents=list[Document])
    async def run_async(self, documents: list[Document]) -> dict[str, Any]:
        """`run` in a worker thread, so the event loop keeps going."""
        return await asyncio.to_thread(self.run, documents)
