"""bge-reranker-v2-gemma (FlagLLMReranker): a causal LM whose 'Yes' logit at the last token is
the score; plus the pair layout all three BGE LLM rerankers share.

Layout (FlagEmbedding `BaseLLMReranker.compute_score_single_gpu`), every piece tokenized
without special tokens, query and passage already carrying their instructions ("A: ", "B: ",
applied by `Reranker` from `default_instructions`):
    [BOS] + tok(query)[:query_max_length] + tok("\\n") + tok(passage)[:max_length]
cut `only_second` (from the separator + passage part) to max_length + len(sep) + len(prompt),
then + tok("\\n") + tok(prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bge_core.engine.inputs import cut
from bge_core.errors import ModelLoadError
from bge_core.families.base import Batch, Family, PackedBatch, Pending, TokenizedItem, score_rows

DEFAULT_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'."
)
#: FlagEmbedding's query / passage instructions of every LLM reranker (format "{}{}").
DEFAULT_INSTRUCTIONS = ("A: ", "B: ")
SEPARATOR = "\n"


@dataclass(frozen=True)
class PairMeta:
    """Token counts the lightweight reranker's passage compression needs."""

    query_length: int  # BOS + query + separator
    prompt_length: int  # separator + prompt


def _cut_ids(tokenizer: Any, texts: list[str], limit: int) -> list[tuple[list[int], bool]]:
    """Token ids of `texts` cut to `limit` on the tokenizer's truncation side, and whether cut."""
    left = getattr(tokenizer, "truncation_side", "right") == "left"
    texts = texts if left else [cut(t, limit) for t in texts]  # huge strings cost O(limit)
    encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=limit + 1)["input_ids"]
    out = []
    for ids in encoded:
        kept = ids[max(0, len(ids) - limit):] if left else ids[:limit]
        out.append((list(kept), len(ids) > limit))
    return out


def tokenize_pairs(
    tokenizer: Any,
    items: list[tuple[str, str]],
    max_length: int,
    options: dict[str, Any],
    *,
    default_prompt: str,
    add_bos: bool,
) -> list[TokenizedItem]:
    """FlagEmbedding's LLM-reranker input ids for (instructed) query / passage pairs (module docstring).

    Options: ``query_max_length`` (None → max_length * 3 // 4), ``prompt`` (None → `default_prompt`).
    `over_length` is set when the query, the passage or the pair had to be cut.
    """
    query_max = options.get("query_max_length")
    query_max = max_length * 3 // 4 if query_max is None else query_max
    prompt = options.get("prompt")
    prompt = default_prompt if prompt is None else prompt
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    sep_ids = tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"]
    pair_max = max_length + len(sep_ids) + len(prompt_ids)
    left = getattr(tokenizer, "truncation_side", "right") == "left"
    bos = [tokenizer.bos_token_id] if add_bos else []
    queries = _cut_ids(tokenizer, [q for q, _ in items], query_max)
    passages = _cut_ids(tokenizer, [p for _, p in items], max_length)
    out = []
    for (q_ids, q_cut), (p_ids, p_cut) in zip(queries, passages):
        first, second = bos + q_ids, sep_ids + p_ids
        excess = len(first) + len(second) - pair_max
        pair_cut = 0 < excess < len(second)  # otherwise only_second leaves the pair as it is
        if pair_cut:
            second = second[excess:] if left else second[:-excess]
        out.append(
            TokenizedItem(
                ids=first + second + sep_ids + prompt_ids,
                over_length=q_cut or p_cut or pair_cut,
                meta=PairMeta(len(first) + len(sep_ids), len(sep_ids) + len(prompt_ids)),
            )
        )
    return out


def yes_token_id(tokenizer: Any) -> int:
    """The id FlagEmbedding reads the score from: the first token of 'Yes'."""
    return int(tokenizer("Yes", add_special_tokens=False)["input_ids"][0])


class LLMRerankerFamily(Family):
    """bge-reranker-v2-gemma: score = logit of 'Yes' after the prompt (raw; sigmoid if normalize).

    Only the last real position's hidden state goes through the LM head, and only its 'Yes' row:
    the full-vocabulary logits FlagEmbedding computes at every position are never formed.
    Options: ``query_max_length``, ``prompt``.
    """

    padding_side = "right"
    supports_packing = True
    default_instructions: ClassVar[tuple[str, str]] = DEFAULT_INSTRUCTIONS

    def __init__(self, tokenizer: Any, model: torch.nn.Module, spec: Any) -> None:
        super().__init__(tokenizer, model, spec)
        self.decoder = model.get_decoder()
        head = model.get_output_embeddings()
        yes = yes_token_id(tokenizer)
        self.yes_weight = head.weight[yes].detach()
        self.yes_bias = None if getattr(head, "bias", None) is None else head.bias[yes].detach()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
        self.add_bos = bos is not None and bos != pad

    @classmethod
    def load(cls, path: str, spec: Any, device: torch.device, dtype: torch.dtype, packed: bool = False
             ) -> LLMRerankerFamily:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False)
        return cls(tokenizer, model.to(device).eval(), spec)

    def tokenize(self, items: list[tuple[str, str]], max_length: int, options: dict[str, Any]) -> list[TokenizedItem]:
        return tokenize_pairs(
            self.tokenizer, items, max_length, options, default_prompt=DEFAULT_PROMPT, add_bos=self.add_bos
        )

    def forward(self, batch: Batch, options: dict[str, Any]) -> Pending:
        hidden = self.decoder(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).last_hidden_state
        return self._score(hidden[torch.arange(hidden.shape[0], device=hidden.device), batch.last_positions()])

    def backbone_module(self) -> torch.nn.Module:
        return self.decoder

    def heads_packed(self, hidden: torch.Tensor, batch: PackedBatch, options: dict[str, Any]) -> Pending:
        return self._score(hidden[batch.ends - 1])

    def _score(self, last: torch.Tensor) -> Pending:
        """'Yes' logit (soft-capped like the LM head) of each row's last hidden state [B, d]."""
        logits = last @ self.yes_weight
        if self.yes_bias is not None:
            logits = logits + self.yes_bias
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return score_rows(logits[:, None])


class OwnModelRerankerFamily(Family):
    """The layerwise and lightweight rerankers: the pair layout with BOS always prepended, on the
    project's own model code (`model_class`, read from the published checkpoint layout)."""

    padding_side = "right"
    default_instructions: ClassVar[tuple[str, str]] = DEFAULT_INSTRUCTIONS
    default_prompt: ClassVar[str] = DEFAULT_PROMPT
    model_class: ClassVar[Any]
    kind: ClassVar[str]

    @classmethod
    def load(cls, path: str, spec: Any, device: torch.device, dtype: torch.dtype, packed: bool = False
             ) -> OwnModelRerankerFamily:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        if tokenizer.bos_token_id is None:
            raise ModelLoadError(f"{path}: the {cls.kind} reranker's tokenizer needs a BOS token")
        return cls(tokenizer, cls.model_class.from_pretrained(path, device, dtype), spec)

    def tokenize(self, items: list[tuple[str, str]], max_length: int, options: dict[str, Any]) -> list[TokenizedItem]:
        return tokenize_pairs(self.tokenizer, items, max_length, options, default_prompt=self.default_prompt,
                              add_bos=True)
