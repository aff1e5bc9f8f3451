"""BGE-M3: dense (CLS), lexical weights (sparse head) and ColBERT vectors from one forward."""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bge_core.errors import ModelLoadError
from bge_core.families.base import Batch, PackedBatch, Pending
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
    """Options: ``dense``, ``sparse``, ``colbert`` (bools), ``normalize``, ``reading_order``
    (lexical-weight dicts in the order their tokens first occur, as FlagEmbedding builds them;
    otherwise in token-id order, which costs less) and ``flagembedding_types`` (lexical weights as
    FlagEmbedding types them: ``defaultdict(int)`` of str token id → ``np.float32``; built with the
    rows, so on several devices off the call's critical path)."""

    def __init__(self, tokenizer: Any, model: torch.nn.Module, spec: Any, colbert: torch.nn.Linear,
                 sparse: torch.nn.Linear) -> None:
        super().__init__(tokenizer, model, spec)
        self.colbert_linear = colbert
        self.sparse_linear = sparse
        # FlagEmbedding drops these ids from lexical weights (cls, eos, pad, unk).
        special = [tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id]
        # Kept on the model's device: copying it there per batch would wait for the queued forward.
        self.unused_ids = torch.tensor(sorted({int(i) for i in special if i is not None}),
                                       device=next(model.parameters()).device)

    @classmethod
    def load(cls, path: str, spec: Any, device: torch.device, dtype: torch.dtype, packed: bool = False) -> M3Family:
        tokenizer, model = load_backbone(path, device, dtype, packed)
        hidden = int(model.config.hidden_size)
        colbert = load_linear_head(os.path.join(path, "colbert_linear.pt"), hidden)
        sparse = load_linear_head(os.path.join(path, "sparse_linear.pt"), hidden, 1)
        return cls(tokenizer, model, spec, colbert.to(device, dtype).eval(), sparse.to(device, dtype).eval())

    def padded_outputs(self, hidden: torch.Tensor, batch: Batch, options: dict[str, Any]) -> Pending:
        mask = batch.attention_mask.bool()
        # Flatten the real tokens so padded and packed batches share one head implementation.
        lengths = torch.tensor(batch.lengths, device=hidden.device)
        seq_ids = torch.repeat_interleave(torch.arange(len(batch.lengths), device=hidden.device), lengths)
        first = torch.cumsum(lengths, 0) - lengths
        tokens = Tokens(hidden=hidden[mask], ids=batch.input_ids[mask], lengths=batch.lengths, first=first,
                        seq_ids=seq_ids)
        return self._heads(tokens, options)

    def packed_outputs(self, hidden: torch.Tensor, batch: PackedBatch, options: dict[str, Any]) -> Pending:
        tokens = Tokens(hidden=hidden, ids=batch.input_ids[0], lengths=batch.lengths, first=batch.starts,
                        seq_ids=batch.seq_ids)
        return self._heads(tokens, options)

    def _heads(self, tokens: Tokens, options: dict[str, Any]) -> Pending:
        """Launch every requested head; no step waits for the device (all shapes are known)."""
        out: dict[str, torch.Tensor] = {}
        if options.get("dense", True):
            dense = tokens.hidden[tokens.first].float()
            out["dense"] = F.normalize(dense, dim=-1) if options.get("normalize", self.spec.normalize) else dense
        if options.get("sparse", False):
            out.update(self._lexical_weights(tokens, bool(options.get("reading_order"))))
        if options.get("colbert", False):
            # Every token's vector, CLS rows included: dropping them on the host avoids a device sync.
            vecs = F.normalize(self.colbert_linear(tokens.hidden).float(), dim=-1)
            # Half-precision runs hand back float16 vectors (as FlagEmbedding does): half the bytes to copy.
            out["colbert"] = vecs if tokens.hidden.dtype == torch.float32 else vecs.half()
        return Pending(out, functools.partial(_m3_rows, tokens.lengths, int(self.model.config.vocab_size),
                                              bool(options.get("flagembedding_types"))))

    def _lexical_weights(self, tokens: Tokens, reading_order: bool = False) -> dict[str, torch.Tensor]:
        """Per (text, token id) the max weight, as sorted keys; special ids and weights <= 0 dropped.

        Keys are ``text * vocab + token id``; dropped tokens get a key past every real one. After a
        sort, the first occurrence of each key opens a segment and a scatter-amax takes its max,
        all with shapes known in advance, so nothing waits for the device.
        """
        weights = torch.relu(self.sparse_linear(tokens.hidden)).squeeze(-1).float()
        vocab = int(self.model.config.vocab_size)
        keep = (weights > 0) & ~torch.isin(tokens.ids, self.unused_ids)
        dropped = len(tokens.lengths) * vocab
        keys = torch.where(keep, tokens.seq_ids * vocab + tokens.ids, dropped)
        keys, order = torch.sort(keys)
        opens = torch.ones_like(keys, dtype=torch.bool)
        opens[1:] = keys[1:] != keys[:-1]
        segment = torch.cumsum(opens.long(), 0) - 1
        best = torch.zeros_like(weights).scatter_reduce_(0, segment, weights[order], reduce="amax",
                                                         include_self=False)
        out = {"sparse_keys": keys, "sparse_opens": opens, "sparse_best": best}
        if reading_order:  # where each token id first occurs, to order each dict as the text reads
            out["sparse_first"] = torch.full_like(keys, keys.shape[0]).scatter_reduce_(
                0, segment, order, reduce="amin", include_self=False)
        return out


def _m3_rows(lengths: list[int], vocab: int, flagembedding_types: bool, host: dict[str, np.ndarray]) -> list[M3Row]:
    """One `M3Row` per text from a batch's host arrays (ColBERT rows are views, CLS dropped)."""
    dense = host.get("dense")
    sparse = _lexical_dicts(host, len(lengths), vocab, flagembedding_types) if "sparse_keys" in host else None
    colbert = None
    if "colbert" in host:
        starts = np.cumsum([0, *lengths[:-1]])
        colbert = [host["colbert"][s + 1 : s + n] for s, n in zip(starts, lengths)]
    return [
        M3Row(
            dense=None if dense is None else dense[i],
            lexical_weights=None if sparse is None else sparse[i],
            colbert_vectors=None if colbert is None else colbert[i],
        )
        for i in range(len(lengths))
    ]


def _lexical_dicts(host: dict[str, np.ndarray], n: int, vocab: int, flagembedding_types: bool = False) -> list[dict]:
    keys = host["sparse_keys"][host["sparse_opens"]]
    best = host["sparse_best"][: len(keys)]
    real = keys < n * vocab
    keys, best = keys[real], best[real]
    if "sparse_first" in host:  # FlagEmbedding's dicts list token ids in the order the text has them
        reorder = np.lexsort((host["sparse_first"][: len(real)][real], keys // vocab))
        keys, best = keys[reorder], best[reorder]
    counts = np.diff(np.searchsorted(keys // vocab, np.arange(n + 1))).tolist()
    # One pass over shared iterators: no per-text slice copies of the id and weight lists.
    if flagembedding_types:
        ids, values = map(str, (keys % vocab).tolist()), iter(best)  # iterating float32 gives np.float32
        return [defaultdict(int, zip(islice(ids, c), islice(values, c))) for c in counts]
    ids, values = iter((keys % vocab).tolist()), iter(best.tolist())
    return [dict(zip(islice(ids, c), islice(values, c))) for c in counts]


@dataclass
class Tokens:
    """The real tokens of a batch, flat: states [T, d], ids [T], per-text lengths and first index."""

    hidden: torch.Tensor
    ids: torch.Tensor
    lengths: list[int]
    first: torch.Tensor
    seq_ids: torch.Tensor
