"""Cross-encoder rerankers (bge-reranker-base / -large / -v2-m3): one logit per (query, passage)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bge_core.engine.inputs import cut
from bge_core.families.base import Batch, Family, PackedBatch, TokenizedItem


class CrossEncoderFamily(Family):
    """FlagReranker's input format: the query cut to ``query_max_length`` (default 3/4 of
    ``max_length``), the pair truncated ``only_second`` to ``max_length``; score = raw logit.

    Options: ``query_max_length``.
    """

    supports_packing = True

    @classmethod
    def load(cls, path: str, spec: Any, device: torch.device, dtype: torch.dtype) -> CrossEncoderFamily:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
        return cls(tokenizer, model.to(device).eval(), spec)

    def tokenize(self, items: list[tuple[str, str]], max_length: int, options: dict[str, Any]) -> list[TokenizedItem]:
        query_max = options.get("query_max_length") or max_length * 3 // 4
        tok = self.tokenizer
        queries = tok([cut(q, query_max) for q, _ in items], add_special_tokens=False)["input_ids"]
        passages = tok([cut(p, max_length) for _, p in items], add_special_tokens=False)["input_ids"]
        specials = tok.num_special_tokens_to_add(pair=True)
        out = []
        for q_ids, p_ids in zip(queries, passages):
            over = len(q_ids) > query_max or len(q_ids) + len(p_ids) + specials > max_length
            q_ids, p_ids = q_ids[:query_max], p_ids[:max_length]
            # FlagEmbedding (transformers 5) decodes the cut ids and tokenizes the pair again.
            q_text = tok.decode(q_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            p_text = tok.decode(p_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            ids = tok(q_text, p_text, truncation="only_second", max_length=max_length)["input_ids"]
            out.append(TokenizedItem(ids=list(ids), over_length=over))
        return out

    def forward(self, batch: Batch, options: dict[str, Any]) -> list[np.ndarray]:
        logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return list(logits[:, :1].float().cpu().numpy())

    def forward_packed(self, batch: PackedBatch, options: dict[str, Any]) -> list[np.ndarray]:
        # The classification head reads only each pair's first token; run it on those rows alone.
        hidden = self.model.base_model(**batch.backbone_kwargs()).last_hidden_state[0]
        first = hidden[batch.starts].unsqueeze(1)  # [n, 1, d], the layout the heads expect
        if getattr(self.model.base_model, "pooler", None) is not None:  # BERT-style: pooler, then classifier
            logits = self.model.classifier(self.model.base_model.pooler(first))
        else:  # RoBERTa-style: the classifier pools the first token itself
            logits = self.model.classifier(first)
        return list(logits[:, :1].float().cpu().numpy())
