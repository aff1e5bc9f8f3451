"""bge-reranker-v2.5-gemma2-lightweight (LightWeightFlagLLMReranker): per-layer scores with
optional passage-token compression."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import AutoTokenizer

from bge_core.errors import ModelLoadError
from bge_core.families.base import Batch, Family, Pending, TokenizedItem
from bge_core.families.llm_reranker import DEFAULT_INSTRUCTIONS, score_rows, tokenize_pairs
from bge_core.models.gemma2_lightweight import CostWiseGemmaReranker

DEFAULT_PROMPT = "Predict whether passage B contains an answer to query A."
DEFAULT_COMPRESS_LAYERS = [8]


class LightweightRerankerFamily(Family):
    """The gemma reranker's pair layout (BOS always prepended) with its own default prompt.

    Options: ``query_max_length``, ``prompt``, ``cutoff_layers`` (None → the last layer),
    ``compress_ratio`` (1 = no compression), ``compress_layers`` (None → [8]). Compression
    needs right padding, which is why this family pads on the right.
    """

    padding_side = "right"
    default_instructions: ClassVar[tuple[str, str]] = DEFAULT_INSTRUCTIONS

    @classmethod
    def load(cls, path: str, spec: Any, device: torch.device, dtype: torch.dtype) -> LightweightRerankerFamily:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        if tokenizer.bos_token_id is None:
            raise ModelLoadError(f"{path}: the lightweight reranker's tokenizer needs a BOS token")
        return cls(tokenizer, CostWiseGemmaReranker.from_pretrained(path, device, dtype), spec)

    def tokenize(self, items: list[tuple[str, str]], max_length: int, options: dict[str, Any]) -> list[TokenizedItem]:
        return tokenize_pairs(self.tokenizer, items, max_length, options, default_prompt=DEFAULT_PROMPT, add_bos=True)

    def forward(self, batch: Batch, options: dict[str, Any]) -> Pending:
        device = batch.input_ids.device
        compress_layers = options.get("compress_layers")
        scores = self.model.score(
            batch.input_ids,
            torch.tensor(batch.lengths, device=device),
            torch.tensor([m.query_length for m in batch.metas], device=device),
            torch.tensor([m.prompt_length for m in batch.metas], device=device),
            cutoff_layers=options.get("cutoff_layers"),
            compress_ratio=options.get("compress_ratio") or 1,
            compress_layers=DEFAULT_COMPRESS_LAYERS if compress_layers is None else compress_layers,
        )
        return score_rows(scores)
