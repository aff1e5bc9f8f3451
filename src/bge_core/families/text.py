"""Tokenization of single texts, shared by the embedder families."""

from __future__ import annotations

from typing import Any

from bge_core.engine.inputs import char_limit, cut
from bge_core.families.base import TokenizedItem


def tokenize_texts(tokenizer: Any, texts: list[str], max_length: int, **kwargs: Any) -> list[TokenizedItem]:
    """Tokenize with the tokenizer's own truncation (as FlagEmbedding does) and flag over-length texts.

    Texts are tokenized once at `max_length + 1`: a result of that length means the text did
    not fit, and only those few are tokenized again at `max_length`.
    """
    cut_texts = [cut(t, max_length) for t in texts]
    # Only ids are used: skipping the mask halves the Python objects built per token.
    kwargs = {"return_attention_mask": False, "return_token_type_ids": False, **kwargs}
    probe = tokenizer(cut_texts, truncation=True, max_length=max_length + 1, **kwargs)["input_ids"]
    over = [len(ids) > max_length or len(t) > char_limit(max_length) for ids, t in zip(probe, texts)]
    redo = [i for i, flag in enumerate(over) if flag]
    if redo:
        again = tokenizer([cut_texts[i] for i in redo], truncation=True, max_length=max_length, **kwargs)["input_ids"]
        for i, ids in zip(redo, again):
            probe[i] = ids
    return [TokenizedItem(ids=list(ids), over_length=flag) for ids, flag in zip(probe, over)]


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
