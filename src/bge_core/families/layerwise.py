"""bge-reranker-v2-minicpm-layerwise (LayerWiseFlagLLMReranker): one score per cutoff layer."""

from __future__ import annotations

from typing import Any

import torch

from bge_core.families.base import Batch, Pending, score_rows
from bge_core.families.llm_reranker import OwnModelRerankerFamily
from bge_core.models.minicpm_layerwise import LayerwiseMiniCPMReranker


class LayerwiseRerankerFamily(OwnModelRerankerFamily):
    """The gemma reranker's pair layout (BOS always prepended); each cutoff layer's normed state
    at the last token goes through that layer's linear head.

    Options: ``query_max_length``, ``prompt``, ``cutoff_layers`` (None → the last layer).
    Scores come one per scored layer, in depth order, as FlagEmbedding returns them.
    """

    model_class = LayerwiseMiniCPMReranker
    kind = "layerwise"

    def forward(self, batch: Batch, options: dict[str, Any]) -> Pending:
        lengths = torch.tensor(batch.lengths, device=batch.input_ids.device)
        scores = self.model.score(batch.input_ids, lengths, options.get("cutoff_layers"))
        return score_rows(scores)
