"""bge-reranker-v2.5-gemma2-lightweight (LightWeightFlagLLMReranker): per-layer scores with
optional passage-token compression."""

from __future__ import annotations

from typing import Any

import torch

from bge_core.families.base import Batch, Pending, score_rows
from bge_core.families.llm_reranker import OwnModelRerankerFamily
from bge_core.models.gemma2_lightweight import CostWiseGemmaReranker

DEFAULT_PROMPT = "Predict whether passage B contains an answer to query A."
DEFAULT_COMPRESS_LAYERS = [8]


class LightweightRerankerFamily(OwnModelRerankerFamily):
    """The gemma reranker's pair layout (BOS always prepended) with its own default prompt.

    Options: ``query_max_length``, ``prompt``, ``cutoff_layers`` (None → the last layer),
    ``compress_ratio`` (1 = no compression), ``compress_layers`` (None → [8]). Compression
    needs right padding, which is why this family pads on the right.
    """

    model_class = CostWiseGemmaReranker
    kind = "lightweight"
    default_prompt = DEFAULT_PROMPT

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
