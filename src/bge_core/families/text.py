"""Tokenization of single texts, shared by the embedder families."""

from __future__ import annotations

from typing import Any

from bge_core.engine.inputs import char_limit, cut
from bge_core.engine.tokens import encode_ids
from bge_core.families.base import TokenizedItem


def tokenize_texts(tokenizer: Any, texts: list[str], max_length: int) -> list[TokenizedItem]:
    """Tokenize with the tokenizer's own truncation (as FlagEmbedding does) and flag over-length texts.

    Texts are tokenized once at `max_length + 1`: a result of that length means the text did
    not fit, and only those few are tokenized again at `max_length`.
    """
    limit = char_limit(max_length)
    cut_texts = [cut(t, max_length) for t in texts]
    probe = encode_ids(tokenizer, cut_texts, max_length=max_length + 1)
    over = [len(ids) > max_length or len(t) > limit for ids, t in zip(probe, texts)]
    redo = [i for i, flag in enumerate(over) if flag]
    if redo:
        for i, ids in zip(redo, encode_ids(tokenizer, [cut_texts[i] for i in redo], max_length=max_length)):
            probe[i] = ids
    return [TokenizedItem(ids, flag) for ids, flag in zip(probe, over)]


def apply_instruction(instruction: str | None, text: str, template: str = "{}{}") -> str:
    """FlagEmbedding's instruction rule: no instruction → the text unchanged; a literal ``\\n``
    in the template means a newline.

    Example:
        >>> apply_instruction("Q: ", "hi")
        'Q: hi'
    """
    if instruction is None:
        return text
    return template.replace("\\n", "\n").format(instruction, text)
