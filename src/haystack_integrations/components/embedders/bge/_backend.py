"""Plumbing shared by the BGE Haystack components: core objects from component options, and the
Haystack-side conversions (devices, secrets, documents, sparse vectors) around them.

`bge_core` is imported only when a model is loaded (or a core object is passed), so building or
deserializing a pipeline loads no model code. Loaded weights are shared by `bge_core` itself: every
component naming the same checkpoint, device and dtype gets the same copy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from haystack.core.serialization import default_from_dict
from haystack.dataclasses import Document, SparseEmbedding
from haystack.utils import ComponentDevice, Secret, deserialize_secrets_inplace

if TYPE_CHECKING:
    from bge_core import Embedder, Embeddings, Reranker


def is_core_model(model: Any) -> bool:
    """Whether `model` is an already-loaded `bge_core.Embedder` or `bge_core.Reranker`."""
    if isinstance(model, (str, os.PathLike)):
        return False
    from bge_core import Embedder, Reranker

    return isinstance(model, (Embedder, Reranker))


def check_model(model: Any, kind: str) -> None:
    """Reject anything but a hub id, a path or a core object of the right `kind` ("Embedder"/"Reranker")."""
    if isinstance(model, (str, os.PathLike)):
        return
    import bge_core

    if not isinstance(model, getattr(bge_core, kind)):
        raise TypeError(f"model must be a hub id, a local path or a bge_core.{kind}, got {type(model).__name__}")


def model_reference(model: str | os.PathLike[str] | Embedder | Reranker) -> str:
    """What `to_dict` stores for `model`: the string itself, or the directory a core object was loaded from."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    return model.name


def component_device(model: Any, device: ComponentDevice | None) -> ComponentDevice:
    """The component's device: the loaded model's own for a core object, else `device` or Haystack's default.

    Raises:
        ValueError: a device map (the engine runs a model on one device), or a `device` that
            contradicts the core object's.
    """
    if device is not None and not isinstance(device, ComponentDevice):
        raise TypeError(f"device must be a haystack ComponentDevice or None, got {type(device).__name__}")
    if device is not None and device.has_multiple_devices:
        raise ValueError("BGE components run on one device; pass ComponentDevice.from_str('cuda:0') or similar")
    if not is_core_model(model):
        return ComponentDevice.resolve_device(device)
    own = ComponentDevice.from_str(str(model.device))
    if device is not None and device.to_torch_str() != own.to_torch_str():
        raise ValueError(f"device {device.to_torch_str()!r} given, but the model is loaded on {own.to_torch_str()!r}")
    return own


def component_dtype(model: Any, dtype: str | None) -> str | None:
    """`dtype`, or for a core object the dtype its weights are loaded in (``"float16"``…)."""
    if not is_core_model(model) or dtype is not None:
        return dtype
    return model.dtype


def _resolved_token(model: Any, token: Secret | None) -> str | None:
    return token.resolve_value() if token is not None and isinstance(model, str) else None


def load_embedder(
    model: Any, device: ComponentDevice, dtype: str | None, token: Secret | None, *, sparse: bool = False,
    **options: Any,
) -> Embedder:
    """A `bge_core.Embedder` on `model`'s (shared) weights with this component's `options`.

    Raises:
        ValueError: `sparse` is asked for and the model is not BGE-M3 (the only one with a sparse head).
    """
    from bge_core import Embedder

    embedder = Embedder(model, device=device.to_torch_str(), dtype=dtype, token=_resolved_token(model, token),
                        **options)
    if sparse and embedder.family != "m3":
        raise ValueError(f"{embedder.loaded.path} is a {embedder.family} model; sparse embeddings need BGE-M3")
    return embedder


def load_reranker(
    model: Any, device: ComponentDevice, dtype: str | None, token: Secret | None, **options: Any
) -> Reranker:
    """A `bge_core.Reranker` on `model`'s (shared) weights with this component's `options`."""
    from bge_core import Reranker

    return Reranker(model, device=device.to_torch_str(), dtype=dtype, token=_resolved_token(model, token), **options)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """`default_from_dict` after restoring the `token` Secret and the `device` (without touching `data`)."""
    init = dict(data.get("init_parameters", {}))
    deserialize_secrets_inplace(init, keys=["token"])
    if isinstance(init.get("device"), dict):
        init["device"] = ComponentDevice.from_dict(init["device"])
    return default_from_dict(cls, {**data, "init_parameters": init})


def check_text(text: Any, component_name: str, documents_component: str) -> None:
    """TypeError, in Haystack's words, unless `text` is one string."""
    if not isinstance(text, str):
        raise TypeError(
            f"{component_name} expects a string as input, got {type(text).__name__}. "
            f"To embed a list of Documents, use {documents_component}."
        )


def check_documents(documents: Any, component_name: str, hint: str = "") -> None:
    """TypeError unless `documents` is a list of Documents (an empty list is fine)."""
    if not isinstance(documents, list) or not all(isinstance(d, Document) for d in documents):
        raise TypeError(f"{component_name} expects a list of Documents as input. {hint}".rstrip())


def document_texts(
    documents: list[Document], meta_fields: list[str], separator: str, suffix: str = ""
) -> list[str]:
    """What gets embedded or ranked for each document: its non-empty chosen meta values, then its content.

    Example:
        >>> document_texts([Document(content="text", meta={"title": "T"})], ["title"], "\\n")
        ['T\\ntext']
    """
    texts = []
    for doc in documents:
        values = [str(doc.meta[key]) for key in meta_fields if doc.meta.get(key) not in (None, "")]
        texts.append(separator.join([*values, doc.content or ""]) + suffix)
    return texts


def encode_documents(embedder: Embedder, texts: list[str], prefix: str | None, **kwargs: Any) -> Embeddings:
    """Encode passages: the model's passage instruction when `prefix` is None, else `prefix` ("" = none)."""
    if prefix is None:
        return embedder.encode_documents(texts, **kwargs)
    return embedder.encode(texts, instruction=prefix or None, **kwargs)


def sparse_embedding(weights: Mapping[int, float], placeholder_id: int) -> SparseEmbedding:
    """Haystack's `SparseEmbedding` of lexical weights, sorted by token id, never empty.

    An empty row (``""`` or text of special tokens only) becomes `bge_core.sparse.storable`'s
    placeholder: the padding id with a tiny weight, which adds 0 to every inner product with a
    real query. Milvus rejects empty sparse rows, for writes and for searches alike.

    Example:
        >>> sparse_embedding({}, placeholder_id=1)
        SparseEmbedding(indices=[1], values=[1e-06])
    """
    from bge_core.sparse import storable

    row = storable(weights, placeholder_id)
    indices = sorted(row)
    return SparseEmbedding(indices=[int(i) for i in indices], values=[float(row[i]) for i in indices])
