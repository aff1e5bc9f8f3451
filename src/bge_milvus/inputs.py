"""Checks on what `HybridCollection.add` is given, all done before the first write, and row ids."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from bge_milvus.backend import ID_MAX_LENGTH, METADATA, TEXT


def content_id(text: str) -> str:
    """The id a text gets when none is given: 32 hex digits of its SHA-256, so re-adding it is a no-op.

    Example:
        >>> content_id("hello")
        '2cf24dba5fb0a30e26e83b2ac5b9e29e'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def checked_texts(texts: Sequence[str], max_bytes: int) -> list[str]:
    """`texts` as a list; `TypeError` naming the first non-str item, `ValueError` naming the first text
    that is not valid Unicode (a lone surrogate cannot be stored as UTF-8) and listing over-long ones.

    Example:
        >>> checked_texts(("a", ""), max_bytes=100)
        ['a', '']
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of str, not a single string")
    out = list(texts)
    sizes = []
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be str, got {type(text).__name__}")
        try:
            sizes.append(len(text.encode("utf-8")))
        except UnicodeEncodeError as error:
            raise ValueError(
                f"texts[{i}] is not valid Unicode: lone surrogate {text[error.start]!r} at position {error.start}"
            ) from None
    too_long = [i for i, size in enumerate(sizes) if size > max_bytes]
    if too_long:
        raise ValueError(f"texts at indices {too_long} are longer than text_max_length={max_bytes} bytes")
    return out


def checked_ids(ids: Sequence[str] | None, texts: list[str]) -> list[str]:
    """The given ids (str, 1 to `ID_MAX_LENGTH` bytes, one per text) or the texts' `content_id`.

    Example:
        >>> checked_ids(["x"], ["a text"])
        ['x']
    """
    if ids is None:
        return [content_id(t) for t in texts]
    if isinstance(ids, str) or len(ids) != len(texts):
        raise ValueError(f"ids must be a sequence with one id per text ({len(texts)})")
    out = list(ids)
    for i, row_id in enumerate(out):
        if not isinstance(row_id, str):
            raise TypeError(f"ids[{i}] must be str, got {type(row_id).__name__}")
        if not 0 < len(row_id.encode("utf-8")) <= ID_MAX_LENGTH:
            raise ValueError(f"ids[{i}] must be 1 to {ID_MAX_LENGTH} bytes long")
    return out


def checked_metadata(metadata: Sequence[dict[str, Any] | None] | None, n: int) -> list[dict[str, Any]]:
    """One JSON-round-tripped dict per text (``{}`` for None), in the form Milvus gives back.

    Example:
        >>> checked_metadata([{"page": (1, 2)}, None], 2)
        [{'page': [1, 2]}, {}]
    """
    if metadata is None:
        return [{} for _ in range(n)]
    if isinstance(metadata, dict) or len(metadata) != n:
        raise ValueError(f"metadata must be a sequence with one dict (or None) per text ({n})")
    out = []
    for i, item in enumerate(metadata):
        if item is not None and not isinstance(item, dict):
            raise TypeError(f"metadata[{i}] must be a dict or None, got {type(item).__name__}")
        try:
            out.append(json.loads(json.dumps(item or {})))
        except (TypeError, ValueError) as error:
            raise TypeError(f"metadata[{i}] is not JSON-serialisable: {error}") from error
    return out


def same_row(stored: dict[str, Any] | None, text: str, metadata: dict[str, Any]) -> bool:
    """Whether a stored row already holds this text and metadata (then it need not be embedded again).

    Example:
        >>> same_row({"text": "a", "metadata": {}}, "a", {})
        True
    """
    return stored is not None and stored.get(TEXT) == text and (stored.get(METADATA) or {}) == metadata
