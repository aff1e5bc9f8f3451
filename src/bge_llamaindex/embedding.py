"""`BGEEmbedding`: any BGE embedding model as a LlamaIndex `BaseEmbedding`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr

if TYPE_CHECKING:
    from bge_core import Embedder, Reranker

DEFAULT_MODEL = "BAAI/bge-small-en-v1.5"

CoreModel = TypeVar("CoreModel", "Embedder", "Reranker")


def check_no_placement(given: dict[str, Any]) -> None:
    """A loaded model stays where it is: device or dtype options next to one are an error."""
    placed = sorted({"device", "dtype"} & set(given))
    if placed:
        raise ValueError(f"{placed} cannot be set for an already loaded model; it keeps its own")


def build_core(
    core_class: type[CoreModel], model: str | CoreModel, options: dict[str, Any],
    settings: Callable[[CoreModel], dict[str, Any]],
) -> tuple[CoreModel, str, dict[str, Any]]:
    """The core object (`core_class`: `Embedder` or `Reranker`) for `model`, the name to serialise,
    and `options` completed from it.

    A loaded core object given without options is used as it is; options given are applied over
    its settings (its device and dtype are its own: giving them is an error). Options left None
    are then filled from the loaded object's `settings`, so that its config (its `name`: the hub id
    or path it was opened by) rebuilds the same model.

    Example:
        >>> from bge_core import Reranker
        >>> core, name, opts = build_core(Reranker, "BAAI/bge-reranker-v2-m3", {"device": None}, vars)
        >>> name, opts
        ('BAAI/bge-reranker-v2-m3', {'device': None})
    """
    given = {k: v for k, v in options.items() if v is not None}
    if not isinstance(model, core_class):
        return core_class(model, **given), str(model), dict(options)
    check_no_placement(given)
    core = model if not given else core_class(model, **given)
    found = settings(core)
    return core, core.name, {k: found.get(k) if v is None else v for k, v in options.items()}


def build_embedder(model: str | Embedder, options: dict[str, Any]) -> tuple[Embedder, str, dict[str, Any]]:
    """`build_core` for a core `Embedder`: the embedder, the name to serialise, and `options` completed from it.

    Example:
        >>> embedder, name, opts = build_embedder("BAAI/bge-m3", {"device": "cpu"})
    """
    from bge_core import Embedder

    return build_core(Embedder, model, options, _embedder_settings)


def _embedder_settings(embedder: Embedder) -> dict[str, Any]:
    return {
        "device": embedder.device, "dtype": embedder.dtype,
        "max_length": embedder.max_length,
        "batch_tokens": embedder.batch_tokens,
        "query_instruction": embedder.query_instruction or "",
        "normalize": embedder.spec.normalize,
    }


class BGEEmbedding(BaseEmbedding):
    """Dense vectors from a BGE model (v1.5, BGE-M3, LLM embedders) for LlamaIndex.

    Documents are embedded as they are, queries with the model's query instruction (from the
    registry unless given). A batch is one call into the core engine; async methods run it in a
    worker thread so the event loop keeps running. For BGE-M3 each forward also keeps the sparse
    result, so a `BGEM3SparseEmbeddingFunction` on the same model gets it for free.

    Args:
        model_name: hub id, local checkpoint directory, or a loaded `bge_core.Embedder`
            (serialised by the name it was opened with; the model itself never enters the config).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``…, or a list such as ``["cuda:0", "cuda:1"]``
            (one replica per device, batches spread over them); default: first GPU if any, else CPU.
        dtype: ``"bf16"`` / ``"fp16"`` / ``"fp32"``; default bf16 on CUDA, fp32 on CPU.
        batch_tokens: token budget of one forward batch (default chosen per device).
        max_length: tokens per text (default: the model's).
        query_instruction: text put before queries; None = registry default, ``""`` = none.
        normalize: L2-normalise vectors (None = the model's default, True for BGE).
        truncate: cut over-long texts (default); False raises ValueError listing them.
        embed_batch_size: texts per call into core (core batches by tokens inside it).

    Example:
        >>> from llama_index.core import VectorStoreIndex, Document
        >>> embed_model = BGEEmbedding(model_name="BAAI/bge-small-en-v1.5", device="cpu")
        >>> index = VectorStoreIndex.from_documents([Document(text="BGE")], embed_model=embed_model)
        >>> len(embed_model.get_query_embedding("what is BGE?"))
        384
    """

    # Typos in option names fail instead of being ignored.
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(default=DEFAULT_MODEL, description="Hub id or local path of the BGE model.")
    embed_batch_size: int = Field(default=256, gt=0, le=2048, description="Texts per call into the core engine.")
    device: str | list[str] | None = Field(
        default=None, description="Torch device, or a list of devices to spread batches over; default: first GPU."
    )
    dtype: str | None = Field(default=None, description="bf16 / fp16 / fp32; default bf16 on CUDA, fp32 on CPU.")
    batch_tokens: int | None = Field(default=None, description="Token budget of one forward batch.")
    max_length: int | None = Field(default=None, description="Tokens per text; default: the model's.")
    query_instruction: str | None = Field(
        default=None, description='Text put before queries; None = registry default, "" = none.'
    )
    normalize: bool | None = Field(default=None, description="L2-normalise vectors; None = the model's default.")
    truncate: bool = Field(default=True, description="Cut over-long texts; False raises ValueError.")

    _embedder: Any = PrivateAttr()

    def __init__(
        self,
        model_name: str | Embedder = DEFAULT_MODEL,
        *,
        device: str | list[str] | None = None,
        dtype: str | None = None,
        batch_tokens: int | None = None,
        max_length: int | None = None,
        query_instruction: str | None = None,
        normalize: bool | None = None,
        truncate: bool = True,
        embed_batch_size: int = 256,
        **kwargs: Any,
    ) -> None:
        options = {
            "device": device, "dtype": dtype, "batch_tokens": batch_tokens, "max_length": max_length,
            "query_instruction": query_instruction, "normalize": normalize,
        }
        embedder, name, options = build_embedder(model_name, options)
        super().__init__(
            model_name=name, embed_batch_size=embed_batch_size, truncate=truncate, **options, **kwargs
        )
        self._embedder = embedder

    @classmethod
    def class_name(cls) -> str:
        return "BGEEmbedding"

    @property
    def embedder(self) -> Embedder:
        """The core `Embedder`; pass it to `BGEM3SparseEmbeddingFunction` to share model and forwards."""
        return self._embedder

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embedder.encode_queries([query], truncate=self.truncate).dense[0].tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embedder.encode_documents(list(texts), truncate=self.truncate).dense.tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
