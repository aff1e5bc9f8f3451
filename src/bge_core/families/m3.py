"""BGE-M3: dense (CLS), lexical weights (sparse head) and ColBERT vectors from one forward."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bge_core.errors import ModelLoadError
from bge_core.families.base import Batch
from bge_core.families.dense import DenseFamily, load_backbone


@dataclass(frozen=True)
class M3Row:
    """The outputs of one text; a part not asked for is None."""

    dense: np.ndarray | None
    lexical_weights: dict[int, float] | None
    colbert_vectors: np.ndarray | None


def load_linear_head(path: str, in_features: int, out_features: int | None = None) -> torch.nn.Linear:
    """Load a `torch.nn.Linear` state dict saved by FlagEmbedding, refusing pickled objects.

    `out_features=None` accepts any output size (ColBERT heads may be narrower than hidden).

    Raises:
        ModelLoadError: naming the file when it is missing, unreadable or the wrong shape.
    """
    name = os.path.basename(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: head file missing; a BGE-M3 checkpoint needs {name} beside config.json")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any load failure is reported with the file name
        raise ModelLoadError(f"{path}: cannot read head weights ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or set(state) != {"weight", "bias"}:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ModelLoadError(f"{path}: expected a Linear state dict with 'weight' and 'bias', found {keys}")
    weight, bias = state["weight"], state["bias"]
    out = weight.shape[0] if out_features is None else out_features
    if weight.ndim != 2 or tuple(weight.shape) != (out, in_features) or tuple(bias.shape) != (out,):
        raise ModelLoadError(
            f"{path}: weight {tuple(weight.shape)} / bias {tuple(bias.shape)} do not fit hidden size {in_features}"
        )
    layer = torch.nn.Linear(in_features, out)
    layer.load_state_dict(state)
    return layer


class M3Family(DenseFamily):
    """Options: ``dense``, ``sparse``, ``colbert`` (bools) and ``normalize``."""

    def __init__(self, tokenizer: Any, model: torch.nn.Module, spec: Any, colbert: torch.nn.Linear,
                 sparse: torch.nn.Linear) -> None:
        super().__init__(tokenizer, model, spec)
        self.colbert_linear = colbert
        self.sparse_linear = sparse
        # FlagEmbedding drops these ids from lexical weights (cls, eos, pad, unk).
        special = [tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id]
        self.unused_ids = torch.tensor(sorted({int(i) for i in special if i is not None}))

    @classmethod
    def load(cls, path: str, spec: Any, device: torch.device, dtype: torch.dtype) -> M3Family:
        tokenizer, model = load_backbone(path, device, dtype)
        hidden = int(model.config.hidden_size)
        colbert = load_linear_head(os.path.join(path, "colbert_linear.pt"), hidden)
        sparse = load_linear_head(os.path.join(path, "sparse_linear.pt"), hidden, 1)
        return cls(tokenizer, model, spec, colbert.to(device, dtype).eval(), sparse.to(device, dtype).eval())

    def forward(self, batch: Batch, options: dict[str, Any]) -> list[M3Row]:
        hidden = self.hidden_states(batch)
        n = hidden.shape[0]
        dense = sparse = colbert = None
        if options.get("dense", True):
            dense = hidden[:, 0]
            if options.get("normalize", self.spec.normalize):
                dense = F.normalize(dense, dim=-1)
            dense = dense.float().cpu().numpy()
        if options.get("sparse", False):
            sparse = self._lexical_weights(hidden, batch)
        if options.get("colbert", False):
            vecs = self.colbert_linear(hidden[:, 1:]) * batch.attention_mask[:, 1:, None].to(hidden.dtype)
            vecs = F.normalize(vecs, dim=-1).float().cpu().numpy()
            colbert = [vecs[i, : batch.lengths[i] - 1] for i in range(n)]
        return [
            M3Row(
                dense=None if dense is None else dense[i],
                lexical_weights=None if sparse is None else sparse[i],
                colbert_vectors=None if colbert is None else colbert[i],
            )
            for i in range(n)
        ]

    def _lexical_weights(self, hidden: torch.Tensor, batch: Batch) -> list[dict[int, float]]:
        weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1).float()
        keep = batch.attention_mask.bool() & (weights > 0)
        keep &= ~torch.isin(batch.input_ids, self.unused_ids.to(batch.input_ids.device))
        ids, w = batch.input_ids.cpu().numpy(), weights.cpu().numpy()
        keep_np = keep.cpu().numpy()
        out = []
        for i in range(hidden.shape[0]):
            row: dict[int, float] = {}
            for token, value in zip(ids[i][keep_np[i]].tolist(), w[i][keep_np[i]].tolist()):
                if value > row.get(token, 0.0):
                    row[token] = value
            out.append(row)
        return out
