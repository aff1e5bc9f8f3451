"""Plumbing shared by the BGE Haystack components: core objects from component options, the
Haystack-side conversions (devices, secrets, documents, sparse vectors) around them, and base
classes for what the components share (init parameters, serialization, loading, embedders' `run`).

`bge_core` is imported only when a model is loaded (or a core object is passed), so building or
deserializing a pipeline loads no model code. Loaded weights are shared by `bge_core` itself: every
component naming the same checkpoint, device and dtype gets the same copy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from haystack.core.serialization import default_from_dict, default_to_dict
from haystack.dataclasses import Document, SparseEmbedding
from haystack.utils import ComponentDevice, Secret, deserialize_secrets_inplace

if TYPE_CHECKING:
    from typing_extensions import Self

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


class BGEComponent:
    """Init parameters and serialization, the same for every BGE component.

    Each component's `__init__` declares its parameters (Haystack and users read that signature)
    and hands its `locals()` (the parameters, in order) to `_configure`, which stores each under
    its own name; `to_dict` writes them back in the same order, so a new parameter is serialized
    without more code. `run` and `run_async` stay on each component: `@component` reads them.
    """

    #: What `model` may be besides a hub id or a path: a loaded `bge_core.Embedder` or `bge_core.Reranker`.
    _core_kind: ClassVar[str]

    #: The names of the `__init__` parameters, in order: what `to_dict` writes.
    _init_parameters: tuple[str, ...]
    model: str | os.PathLike[str] | Embedder | Reranker
    device: ComponentDevice
    token: Secret | None
    dtype: str | None

    def _configure(self, init_args: Mapping[str, Any]) -> None:
        """Check and store the `__init__` arguments; device and dtype follow a loaded core `model`'s own."""
        model = init_args["model"]
        check_model(model, self._core_kind)
        self._check_options(init_args)
        self._init_parameters = tuple(name for name in init_args if name not in ("self", "__class__"))
        for name in self._init_parameters:
            setattr(self, name, init_args[name])
        self.device = component_device(model, init_args["device"])
        self.dtype = component_dtype(model, init_args["dtype"])
        if "meta_fields_to_embed" in init_args:  # an own list, None meaning none
            self.meta_fields_to_embed = list(init_args["meta_fields_to_embed"] or [])

    def _check_options(self, init_args: Mapping[str, Any]) -> None:
        """Raise for an invalid option other than `model` and `device` (a component with such checks overrides it)."""

    def to_dict(self) -> dict[str, Any]:
        """Serialize the component (a core object as `model` is stored as its checkpoint directory)."""
        params = {name: getattr(self, name) for name in self._init_parameters}
        params.update(
            model=model_reference(self.model),
            device=self.device.to_dict(),
            token=self.token.to_dict() if self.token is not None else None,
        )
        return default_to_dict(self, **params)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Rebuild the component from `to_dict`'s output."""
        # Restore the `token` Secret and the `device` on a copy: `data` stays as it was.
        init = dict(data.get("init_parameters", {}))
        deserialize_secrets_inplace(init, keys=["token"])
        if isinstance(init.get("device"), dict):
            init["device"] = ComponentDevice.from_dict(init["device"])
        return default_from_dict(cls, {**data, "init_parameters": init})


class BGEEmbedderComponent(BGEComponent):
    """What the four embedders share: loading the core `Embedder` once, and the work of their `run`."""

    _core_kind = "Embedder"
    #: BGE-M3 lexical weights (`SparseEmbedding`) instead of dense vectors.
    _sparse: ClassVar[bool] = False
    #: The core embedder, set by `warm_up`.
    _embedder: Embedder | None = None

    prefix: str | None
    suffix: str
    max_length: int | None
    batch_tokens: int | None
    truncate: bool
    progress_bar: bool
    meta_fields_to_embed: list[str]
    embedding_separator: str

    def _embedder_options(self) -> dict[str, Any]:
        """`bge_core.Embedder` options of this component beyond `max_length` and `batch_tokens`."""
        return {}

    def warm_up(self) -> None:
        """Load the model once; later calls return at once.

        Raises:
            ValueError: a sparse embedder's model is not BGE-M3 (the only BGE model with a sparse head).
        """
        if self._embedder is None:
            self._embedder = load_embedder(
                self.model, self.device, self.dtype, self.token, sparse=self._sparse, max_length=self.max_length,
                batch_tokens=self.batch_tokens, **self._embedder_options(),
            )

    def _embed_query(self, text: Any, documents_component: str) -> list[float] | SparseEmbedding:
        """A text embedder's `run`: the query (plus `suffix`) as a dense vector or a `SparseEmbedding`.

        Raises:
            TypeError: `text` is not a string (the message names `documents_component`).
        """
        check_text(text, type(self).__name__, documents_component)
        self.warm_up()
        assert self._embedder is not None
        out = self._embedder.encode_queries(
            [text + self.suffix], dense=not self._sparse, sparse=self._sparse, truncate=self.truncate,
            show_progress=self.progress_bar,
        )
        if self._sparse:
            return sparse_embedding(out.lexical_weights[0], self._embedder.pad_token_id)
        return out.dense[0].tolist()

    def _embed_documents(self, documents: Any, text_component: str) -> list[Document]:
        """A document embedder's `run`: copies of `documents` with `embedding` or `sparse_embedding` set.

        Raises:
            TypeError: `documents` is not a list of Documents (the message names `text_component`).
        """
        check_documents(documents, type(self).__name__, f"To embed a string, use {text_component}.")
        if not documents:
            return []
        self.warm_up()
        assert self._embedder is not None
        texts = document_texts(documents, self.meta_fields_to_embed, self.embedding_separator, self.suffix)
        out = encode_documents(
            self._embedder, texts, self.prefix, dense=not self._sparse, sparse=self._sparse, truncate=self.truncate,
            show_progress=self.progress_bar,
        )
        if self._sparse:
            pad = self._embedder.pad_token_id
            return [
                replace(doc, sparse_embedding=sparse_embedding(weights, pad))
                for doc, weights in zip(documents, out.lexical_weights)
            ]
        return [replace(doc, embedding=vector.tolist()) for doc, vector in zip(documents, out.dense)]
