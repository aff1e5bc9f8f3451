"""Helpers shared by the LangChain adapters: the core object an adapter runs on, and input checks."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

from bge_core import Embedder, Reranker

CoreModel = TypeVar("CoreModel", Embedder, Reranker)


def core_model(
    core_class: type[CoreModel], model_name: str | os.PathLike[str] | CoreModel, *, device: str | None,
    dtype: str | None, **overrides: Any,
) -> CoreModel:
    """The core `Embedder` or `Reranker` (`core_class`) an adapter runs on.

    Loading goes through core's cache, so adapters naming the same checkpoint, device and dtype share
    one copy of the weights (and, for BGE-M3, one forward per text for dense + sparse).
    A loaded core object is used as it is unless an override is given.

    Example:
        >>> core_model(Embedder, "BAAI/bge-m3", device="cpu", dtype=None, max_length=1024).family
        'm3'
    """
    if isinstance(model_name, core_class):
        if device is not None or dtype is not None:
            raise ValueError(
                f"device and dtype come from the loaded {core_class.__name__} given as model_name; leave them unset"
            )
        if all(value is None for value in overrides.values()):
            return model_name  # keeps every setting its creator chose
        return core_class(model_name, **overrides)
    return core_class(os.fspath(model_name), device=device, dtype=dtype, **overrides)


def check_texts(texts: Any) -> list[str]:
    """`texts` as a list, refusing a bare string (LangChain passes lists; a str here is a caller bug).

    Items are checked by core, which names the index of a non-str item.

    Example:
        >>> check_texts(("a", "b"))
        ['a', 'b']
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    return list(texts)


def check_query(text: Any) -> str:
    """`text` itself when it is a str, else a TypeError.

    Example:
        >>> check_query("what is BGE?")
        'what is BGE?'
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    return text
