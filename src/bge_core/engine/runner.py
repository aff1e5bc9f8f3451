"""The engine: tokenize → schedule → forward → head, written once for every family."""

from __future__ import annotations

import threading
from typing import Any

import torch
from tqdm.auto import tqdm

from bge_core.engine import schedule
from bge_core.engine.attention import can_pack, use_packed_attention
from bge_core.families.base import Batch, Family, PackedBatch, TokenizedItem

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
        bar = tqdm(total=sum(lengths), unit="tok", unit_scale=True, disable=not show_progress, desc="encode")
        for batch_indices in schedule.token_budget_batches(order, lengths, budget, padded=not self.packed):
            def run_batch(indices: list[int]) -> list[Any]:
                return self._forward([tokenized[i] for i in indices], options)

            results.extend(schedule.run_with_oom_split(batch_indices, run_batch))
            bar.update(sum(lengths[i] for i in batch_indices))
        bar.close()
        return schedule.restore_order(order, results)

    def _forward(self, rows: list[TokenizedItem], options: dict[str, Any]) -> list[Any]:
        with self._forward_lock, torch.inference_mode():
            self.forward_calls += 1
            self.rows_forwarded += len(rows)
            if self.packed:
                return self.family.forward_packed(self._pack(rows), options)
            return self.family.forward(self._pad(rows), options)

    def _pack(self, rows: list[TokenizedItem]) -> PackedBatch:
        lengths = [len(r.ids) for r in rows]
        offset = self.family.position_offset()
        ids = torch.tensor([i for r in rows for i in r.ids], dtype=torch.long)
        positions = torch.cat([torch.arange(offset, offset + n) for n in lengths])
        cu = torch.zeros(len(rows) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
        return PackedBatch(
            input_ids=ids.to(self.device, non_blocking=True)[None],
            position_ids=positions.to(self.device, non_blocking=True)[None],
            cu_seqlens=cu.to(self.device, non_blocking=True),
            max_length=max(lengths),
            lengths=lengths,
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
