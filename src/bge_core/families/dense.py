"""Dense embedders: BERT / XLM-R BGE models (CLS or mean pooling) and LLM embedders (last token)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from bge_core.engine.tokens import load_tokenizer
from bge_core.families.base import Batch, Family, PackedBatch, Pending, TokenizedItem, split_rows, split_tokens
from bge_core.families.text import tokenize_texts
from bge_core.models.bert import load_packed_backbone, runs_fused

_ENCODERS_WITH_POOLER = {"bert", "xlm-roberta", "roberta"}


def pool(hidden: torch.Tensor, batch: Batch, method: str) -> torch.Tensor:
    """Sentence vectors from token states: ``cls``, masked ``mean`` or ``last_token``."""
    if method == "cls":
        return hidden[:, 0]
    if method == "mean":
        mask = batch.attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    if method == "last_token":
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, batch.last_positions()]
    raise ValueError(f"unknown pooling {method!r}; expected 'cls', 'mean' or 'last_token'")


def pool_packed(hidden: torch.Tensor, batch: PackedBatch, method: str) -> torch.Tensor:
    """`pool` for packed token states [T, d]."""
    if method == "cls":
        return hidden[batch.starts]
    if method == "last_token":
        return hidden[batch.ends - 1]
    if method == "mean":
        lengths = batch.ends - batch.starts
        sums = torch.zeros(len(lengths), hidden.shape[1], device=hidden.device, dtype=torch.float32)
        sums.index_add_(0, batch.seq_ids, hidden.float())
        return (sums / lengths[:, None]).to(hidden.dtype)
    raise ValueError(f"unknown pooling {method!r}; expected 'cls', 'mean' or 'last_token'")


def token_states(hidden: torch.Tensor, lengths: list[int]) -> Pending:
    """The last layer's state of every token (special tokens included), float32, one (tokens, d) array
    per text, from the real tokens of a batch back to back ([T, d]): no pooling, head or normalisation.

    Example:
        >>> rows = token_states(torch.ones(5, 2), [2, 3]).host_outputs().rows()
        >>> [r.shape for r in rows]
        [(2, 2), (3, 2)]
    """
    # A copy even in float32: `hidden` may be a CUDA graph's output buffer, rewritten by the next replay.
    return Pending({"token_states": hidden.to(torch.float32, copy=True)}, split_tokens("token_states", lengths))


def load_backbone(path: str, device: torch.device, dtype: torch.dtype, packed: bool = False
                  ) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and bare transformer of a checkpoint, in eval mode on `device`.

    Where the engine will run it packed with the fused encoder (`packed`, CUDA, half precision, a plain
    BERT / XLM-R), the weights load into `PackedBertBackbone` without importing transformers' model
    classes (models/bert.py says why); otherwise, and for any checkpoint layout it does not hold, into
    transformers' `AutoModel`.

    Example:
        >>> tokenizer, model = load_backbone("./bge-small", torch.device("cpu"), torch.float32)  # doctest: +SKIP
    """
    tokenizer = load_tokenizer(path)
    if runs_fused(packed, device, dtype):
        backbone = load_packed_backbone(path, device, dtype)
        if backbone is not None:
            return tokenizer, backbone
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    # Encoders ship a pooler that embeddings never use; not building it saves memory and a warning.
    extra = {"add_pooling_layer": False} if config.model_type in _ENCODERS_WITH_POOLER else {}
    model = AutoModel.from_pretrained(path, config=config, dtype=dtype, trust_remote_code=False, **extra)
    return tokenizer, model.to(device).eval()


class DenseFamily(Family):
    """One pooled, optionally L2-normalised vector per text.

    Options: ``pooling`` and ``normalize`` (default from the model spec).
    """

    supports_packing = True

    def __init__(self, tokenizer: Any, model: torch.nn.Module, spec: Any) -> None:
        super().__init__(tokenizer, model, spec)
        # Decoder tokenizers usually pad on the left; last-token pooling handles either side.
        self.padding_side = getattr(tokenizer, "padding_side", "right") or "right"

    @classmethod
    def load(cls, path: str, spec: Any, device: torch.device, dtype: torch.dtype, packed: bool = False
             ) -> DenseFamily:
        tokenizer, model = load_backbone(path, device, dtype, packed)
        return cls(tokenizer, model, spec)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, items: list[str], max_length: int, options: dict[str, Any]) -> list[TokenizedItem]:
        return tokenize_texts(self.tokenizer, items, max_length)

    def hidden_states(self, batch: Batch) -> torch.Tensor:
        return self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state

    def forward(self, batch: Batch, options: dict[str, Any]) -> Pending:
        hidden = self.hidden_states(batch)
        if options.get("token_states"):
            return token_states(hidden[batch.attention_mask.bool()], batch.lengths)
        return self.padded_outputs(hidden, batch, options)

    def heads_packed(self, hidden: torch.Tensor, batch: PackedBatch, options: dict[str, Any]) -> Pending:
        if options.get("token_states"):
            return token_states(hidden, batch.lengths)
        return self.packed_outputs(hidden, batch, options)

    # Token states are every text model's; a subclass replaces only what it makes of them (its heads).
    def padded_outputs(self, hidden: torch.Tensor, batch: Batch, options: dict[str, Any]) -> Pending:
        """The family's outputs from a padded batch's token states [B, L, d]."""
        return self._finish(pool(hidden, batch, options.get("pooling") or self.spec.pooling), options)

    def packed_outputs(self, hidden: torch.Tensor, batch: PackedBatch, options: dict[str, Any]) -> Pending:
        """The family's outputs from a packed batch's token states [T, d]."""
        return self._finish(pool_packed(hidden, batch, options.get("pooling") or self.spec.pooling), options)

    def _finish(self, vectors: torch.Tensor, options: dict[str, Any]) -> Pending:
        vectors = vectors.float()
        if options.get("normalize", self.spec.normalize):
            vectors = F.normalize(vectors, dim=-1)
        return Pending({"dense": vectors}, split_rows("dense"))
