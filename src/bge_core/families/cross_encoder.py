"""Cross-encoder rerankers (bge-reranker-base / -large / -v2-m3): one logit per (query, passage)."""

from __future__ import annotations

from typing import Any

import torch

from bge_core.engine.inputs import cut
from bge_core.engine.tokens import decode_ids, encode_ids, load_tokenizer
from bge_core.families.base import Batch, Family, PackedBatch, Pending, TokenizedItem, score_rows
from bge_core.models.bert import load_packed_classifier, runs_fused


class CrossEncoderFamily(Family):
    """FlagReranker's input format: the query cut to ``query_max_length`` (default 3/4 of
    ``max_length``), the pair truncated ``only_second`` to ``max_length``; score = raw logit.

    Options: ``query_max_length``.
    """

    supports_packing = True

    @classmethod
    def load(cls, path: str, spec: Any, device: torch.device, dtype: torch.dtype, packed: bool = False
             ) -> CrossEncoderFamily:
        tokenizer = load_tokenizer(path)
        if runs_fused(packed, device, dtype):  # weights for the fused encoder, without transformers' model stack
            own = load_packed_classifier(path, device, dtype)
            if own is not None:
                return cls(tokenizer, own, spec)
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, trust_remote_code=False)
        return cls(tokenizer, model.to(device).eval(), spec)

    def tokenize(self, items: list[tuple[str, str]], max_length: int, options: dict[str, Any]) -> list[TokenizedItem]:
        tok = self.tokenizer
        # The query may never take the whole pair: leave room for the specials and one passage token.
        specials = tok.num_special_tokens_to_add(pair=True)
        room = max_length - specials - 1
        query_max = min(options.get("query_max_length") or max_length * 3 // 4, max(room, 1))
        n = len(items)
        # Queries and passages in one backend call, and decoded in one: per-call overhead is GIL time.
        both = encode_ids(tok, [cut(q, query_max) for q, _ in items] + [cut(p, max_length) for _, p in items],
                          max_length=None, add_special_tokens=False)
        queries, passages = both[:n], both[n:]
        over = [len(q) > query_max or len(q) + len(p) + specials > max_length for q, p in zip(queries, passages)]
        # FlagEmbedding 1.4 (transformers 5) decodes the cut ids and tokenizes the texts again; the
        # round trip is not always the identity (unknown tokens, cut words), so it is kept as is.
        texts = decode_ids(tok, [q if len(q) <= query_max else q[:query_max] for q in queries]
                           + [p if len(p) <= max_length else p[:max_length] for p in passages])
        q_texts, p_texts = texts[:n], texts[n:]
        ids: list[list[int]] = [[] for _ in items]
        full = [i for i, p in enumerate(p_texts) if p]
        # An empty passage is no second text: the query is tokenized alone (as a per-pair call does).
        alone = [i for i, p in enumerate(p_texts) if not p]
        if full:
            encoded = encode_ids(tok, [(q_texts[i], p_texts[i]) for i in full], max_length=max_length,
                                 strategy="only_second")
            for i, row in zip(full, encoded):
                ids[i] = row
        if alone:
            for i, row in zip(alone, encode_ids(tok, [q_texts[i] for i in alone], max_length=max_length)):
                ids[i] = row
        return [TokenizedItem(row, flag) for row, flag in zip(ids, over)]

    def forward(self, batch: Batch, options: dict[str, Any]) -> Pending:
        logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return _scores(logits)

    def backbone_module(self) -> torch.nn.Module:
        return self.model.base_model

    def heads_packed(self, hidden: torch.Tensor, batch: PackedBatch, options: dict[str, Any]) -> Pending:
        # The classification head reads only each pair's first token; run it on those rows alone.
        first = hidden[batch.starts].unsqueeze(1)  # [n, 1, d], the layout the heads expect
        if getattr(self.model.base_model, "pooler", None) is not None:  # BERT-style: pooler, then classifier
            logits = self.model.classifier(self.model.base_model.pooler(first))
        else:  # RoBERTa-style: the classifier pools the first token itself
            logits = self.model.classifier(first)
        return _scores(logits)


def _scores(logits: torch.Tensor) -> Pending:
    return score_rows(logits[:, :1])
