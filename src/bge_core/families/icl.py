"""bge-en-icl: an LLM embedder whose queries carry in-context examples (FlagICLModel)."""

from __future__ import annotations

from typing import Any

from bge_core.engine.inputs import cut
from bge_core.families.base import TokenizedItem
from bge_core.families.dense import DenseFamily
from bge_core.families.text import tokenize_texts


def examples_prefix(examples: list[dict[str, str]] | None, instruction: str | None, template: str) -> str:
    """FlagICLModel's prefix: each example formatted, joined and followed by a blank line.

    Example:
        >>> examples_prefix([{"query": "q", "response": "r"}], "I", "<instruct>{}\\n<query>{}\\n<response>{}")
        '<instruct>I\\n<query>q\\n<response>r\\n\\n'
    """
    if not examples:
        return ""
    template = template.replace("\\n", "\n")
    parts = [
        template.format(e.get("instruct", instruction), e.get("query", ""), e.get("response", "")) for e in examples
    ]
    return "\n\n".join(parts) + "\n\n"


class ICLFamily(DenseFamily):
    """Documents are tokenized plainly. Queries (option ``icl_query``) are cut to fit, decoded,
    wrapped as ``prefix + query + suffix`` and tokenized again, exactly as FlagICLModel does.

    Options: ``icl_query`` (bool), ``prefix`` (str), ``suffix`` (str).
    """

    def tokenize(self, items: list[str], max_length: int, options: dict[str, Any]) -> list[TokenizedItem]:
        if not options.get("icl_query"):
            return tokenize_texts(self.tokenizer, items, max_length)
        tok = self.tokenizer
        prefix, suffix = options.get("prefix", ""), options.get("suffix", self.spec.suffix)
        prefix_len = len(tok(prefix, add_special_tokens=False)["input_ids"])
        suffix_len = len(tok(suffix, add_special_tokens=False)["input_ids"])
        bos_len = len(tok("<s>", add_special_tokens=False)["input_ids"])
        eos_len = len(tok(f"{suffix}</s>", add_special_tokens=False)["input_ids"])
        query_max = max_length - bos_len - eos_len
        outer_max = (prefix_len + suffix_len + max_length + 8) // 8 * 8 + 8
        probe = tok([cut(t, query_max) for t in items], truncation=True, max_length=query_max + 1,
                    add_special_tokens=False)["input_ids"]
        over = [len(ids) > query_max for ids in probe]
        decoded = tok.batch_decode([ids[:query_max] for ids in probe])
        wrapped = tok([prefix + text + suffix for text in decoded], truncation=True, max_length=outer_max)["input_ids"]
        return [TokenizedItem(ids=list(ids), over_length=flag) for ids, flag in zip(wrapped, over)]
