"""The engine: tokenize → schedule → forward → head, written once for every family."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bge_core.engine import schedule
from bge_core.engine.attention import can_pack, use_packed_attention
from bge_core.families.base import Batch, Family, PackedBatch, Pending, TokenizedItem

#: Default token budget of one batch (padded rows × longest row). Large enough to keep a GPU
#: busy on passages, small enough for an 8192-token document to fit on a modest card.
DEFAULT_TOKEN_BUDGET = {"cuda": 65536, "cpu": 16384}


class Engine:
    """Runs one loaded family on its device; safe to call from many threads.

    The tokenizer is guarded by its own lock (HF fast tokenizers are not thread-safe) and
    forwards are serialized per model, so concurrent callers get the same results as serial ones.

    Example:
        >>> engine = Engine(family, device=torch.device("cpu"))
        >>> outputs = engine.run(["hello", "world"], max_length=512, options={})
    """

    def __init__(
        self, family: Family, device: torch.device, token_budget: int | None = None, packed: bool | None = None
    ) -> None:
        self.family = family
        self.device = device
        self.token_budget = token_budget or DEFAULT_TOKEN_BUDGET.get(device.type, 16384)
        dtype = next(family.model.parameters()).dtype
        if packed is None or (packed and device.type != "cpu"):
            packed = can_pack(family.model, device, dtype)
        # Packed batches carry no padding: attention runs on variable-length sequences (CUDA). On CPU
        # packing is used only when asked for (each sequence then runs SDPA alone; tests use it).
        self.packed = bool(packed) and family.supports_packing
        if packed:
            use_packed_attention(family.model)
        self._tokenizer_lock = threading.Lock()
        self._forward_lock = threading.Lock()
        self.forward_calls = 0  # batches run (tests and benchmarks read these)
        self.rows_forwarded = 0

    def tokenize(self, items: list[Any], max_length: int, options: dict[str, Any]) -> list[TokenizedItem]:
        with self._tokenizer_lock:
            return self.family.tokenize(items, max_length, options)

    def run(
        self,
        items: list[Any],
        *,
        max_length: int,
        options: dict[str, Any],
        truncate: bool = True,
        token_budget: int | None = None,
        show_progress: bool = False,
    ) -> list[Any]:
        """Compute the family's outputs for `items`, returned in input order.

        Raises:
            ValueError: `truncate=False` and some items exceed `max_length` (indices listed).
        """
        if not items:
            return []
        tokenized = self.tokenize(items, max_length, options)
        if not truncate:
            over = [i for i, t in enumerate(tokenized) if t.over_length]
            if over:
                shown = ", ".join(map(str, over[:20])) + (" …" if len(over) > 20 else "")
                raise ValueError(
                    f"{len(over)} input(s) exceed max_length={max_length} tokens at index {shown}; "
                    "pass truncate=True to cut them"
                )
        lengths = [len(t.ids) for t in tokenized]
        order = schedule.length_order(lengths)
        budget = token_budget or self.token_budget
        results: list[Any] = []
        in_flight: list[tuple[list[Any], int]] = []
        bar = tqdm(total=sum(lengths), unit="tok", unit_scale=True, disable=not show_progress, desc="encode")

        def run_batch(indices: list[int]) -> list[Any]:
            return [self._forward([tokenized[i] for i in indices], options)]

        def settle(keep: int) -> None:
            # Finish older batches only after the next one is queued on the device, so host work
            # (copies, dicts) overlaps device work.
            while len(in_flight) > keep:
                pendings, n_tokens = in_flight.pop(0)
                for pending in pendings:
                    results.extend(pending.finish() if isinstance(pending, Pending) else pending)
                bar.update(n_tokens)

        for batch_indices in schedule.token_budget_batches(order, lengths, budget, padded=not self.packed):
            pendings = schedule.run_with_oom_split(batch_indices, run_batch)
            in_flight.append((pendings, sum(lengths[i] for i in batch_indices)))
            settle(keep=1)
        settle(keep=0)
        bar.close()
        return schedule.restore_order(order, results)

    def _forward(self, rows: list[TokenizedItem], options: dict[str, Any]) -> list[Any] | Pending:
        with self._forward_lock, torch.inference_mode():
            self.forward_calls += 1
            self.rows_forwarded += len(rows)
            if self.packed:
                return self.family.forward_packed(self._pack(rows), options)
            return self.family.forward(self._pad(rows), options)

    def _pack(self, rows: list[TokenizedItem]) -> PackedBatch:
        lengths = np.array([len(r.ids) for r in rows])
        total = int(lengths.sum())
        ids = np.fromiter(itertools.chain.from_iterable(r.ids for r in rows), dtype=np.int64, count=total)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        positions = np.arange(total) - starts + self.family.position_offset()
        seq_ids = np.repeat(np.arange(len(rows)), lengths)
        cu = np.zeros(len(rows) + 1, dtype=np.int32)
        cu[1:] = np.cumsum(lengths)

        def to_device(array: np.ndarray) -> torch.Tensor:
            tensor = torch.from_numpy(array)
            if self.device.type == "cuda":  # pinned, so the copy does not wait for queued kernels
                return tensor.pin_memory().to(self.device, non_blocking=True)
            return tensor

        return PackedBatch(
            input_ids=to_device(ids)[None],
            position_ids=to_device(positions.astype(np.int64))[None],
            cu_seqlens=to_device(cu),
            max_length=int(lengths.max()),
            lengths=lengths.tolist(),
            seq_ids=to_device(seq_ids.astype(np.int64)),
            metas=[r.meta for r in rows],
        )

    def _pad(self, rows: list[TokenizedItem]) -> Batch:
        lengths = [len(r.ids) for r in rows]
        width = max(lengths)
        multiple = self.family.pad_to_multiple_of
        if multiple:
            width = -(-width // multiple) * multiple
        ids = torch.full((len(rows), width), self.family.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        left = self.family.padding_side == "left"
        for r, (row, n) in enumerate(zip(rows, lengths)):
            span = slice(width - n, width) if left else slice(0, n)
            ids[r, span] = torch.tensor(row.ids, dtype=torch.long)
            mask[r, span] = 1
        return Batch(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            lengths=lengths,
            padding_side=self.family.padding_side,
            metas=[r.meta for r in rows],
        )
