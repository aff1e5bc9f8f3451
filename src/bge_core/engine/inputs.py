"""Input validation shared by every entry point (ARCHITECTURE §4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Characters kept per allowed token before tokenizing. Real text averages 3–6 characters a
#: token, so cutting at 64 per token never changes a truncated result, and a 10 MB string
#: cannot stall the tokenizer.
CHARS_PER_TOKEN_LIMIT = 64


def check_unicode(text: str, what: str) -> None:
    """ValueError for a string that cannot be encoded (a lone surrogate, e.g. from a bad decode)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{what} is not valid Unicode: lone surrogate {text[error.start]!r} at position {error.start}"
            ) from None


def as_text_list(texts: str | Sequence[str], what: str = "texts") -> tuple[list[str], bool]:
    """Validate texts; return them as a list and whether a single string was given.

    Raises:
        TypeError: naming the first index that is not a `str`.
        ValueError: naming the first string that is not valid Unicode (a lone surrogate).

    Example:
        >>> as_text_list("hello")
        (['hello'], True)
    """
    if isinstance(texts, str):
        check_unicode(texts, what)
        return [texts], True
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise TypeError(f"{what} must be a str or a sequence of str, got {type(texts).__name__}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] must be str, got {type(t).__name__}")
        check_unicode(t, f"{what}[{i}]")
    return out, False


def as_pair_list(pairs: Any) -> tuple[list[tuple[str, str]], bool]:
    """Validate (query, passage) pairs; a single pair may be given bare.

    Example:
        >>> as_pair_list(("q", "p"))
        ([('q', 'p')], True)
    """
    if isinstance(pairs, (tuple, list)) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs):
        check_unicode(pairs[0], "query")
        check_unicode(pairs[1], "passage")
        return [(pairs[0], pairs[1])], True
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a sequence of (query, passage) pairs, got {type(pairs).__name__}")
    out = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"pairs[{i}] must be a (query, passage) pair, got {type(pair).__name__}")
        for j, part in enumerate(pair):
            name = "query" if j == 0 else "passage"
            if not isinstance(part, str):
                raise TypeError(f"pairs[{i}] {name} must be str, got {type(part).__name__}")
            check_unicode(part, f"pairs[{i}] {name}")
        out.append((pair[0], pair[1]))
    return out, False


def char_limit(max_length: int) -> int:
    """Longest string worth handing to the tokenizer for `max_length` tokens."""
    return max(4096, max_length * CHARS_PER_TOKEN_LIMIT)


def cut(text: str, max_length: int) -> str:
    """Cut `text` before tokenizing so huge strings cost O(max_length)."""
    limit = char_limit(max_length)
    return text if len(text) <= limit else text[:limit]
