"""bge-reranker-v2-minicpm-layerwise (LayerWiseFlagLLMReranker): one score per cutoff layer."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import AutoTokenizer

from bge_core.errors import ModelLoadError
from bge_core.families.base import Batch, Family, Pending, TokenizedItem
from bge_core.families.llm_reranker import DEFAULT_INSTRUCTIONS, DEFAULT_PROMPT, score_rows, tokenize_pairs
from bge_core.models.minicpm_layerwise import LayerwiseMiniCPMReranker


class LayerwiseRerankerFamily(Family):
    """The gemma reranker's pair layout (BOS always prepended); each cutoff layer's normed state
    at the last token goes through that layer's linear head.

    Options: ``query_max_length``, ``prompt``, ``cutoff_layers`` (None → the last layer).
    Scores come one per scored layer, in depth order, as FlagEmbedding returns them.
    """

    padding_side = "right"
    default_instructions: ClassVar[tuple[str, str]] = DEFAULT_INSTRUCTIONS

    @classmethod
    def load(cls, path: str, spec: Any, device: torch.device, dtype: torch.dtype) -> LayerwiseRerankerFamily:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        if tokenizer.bos_token_id is None:
            raise ModelLoadError(f"{path}: the layerwise reranker's tokenizer needs a BOS token")
        return cls(tokenizer, LayerwiseMiniCPMReranker.from_pretrained(path, device, dtype), spec)

    def tokenize(self, items: list[tuple[str, str]], max_length: int, options: dict[str, Any]) -> list[TokenizedItem]:
        return tokenize_pairs(self.tokenizer, items, max_length, options, default_prompt=DEFAULT_PROMPT, add_bos=True)

    def forward(self, batch: Batch, options: dict[str, Any]) -> Pending:
        lengths = torch.tensor(batch.lengths, device=batch.input_ids.device)
        scores = self.model.score(batch.input_ids, lengths, options.get("cutoff_layers"))
        return score_rows(scores)
