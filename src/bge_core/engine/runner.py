"""The engine: tokenize → schedule → forward → head, written once for every family."""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bge_core.engine import packing, schedule
from bge_core.engine.attention import can_pack, use_packed_attention
from bge_core.engine.graphs import GraphCache
from bge_core.families.base import Batch, Family, HostOutputs, PackedBatch, Pending, TokenizedItem
from bge_core.models.encoder import fused_encoder

#: Default token budget of one batch (padded rows × longest row). Large enough to keep a GPU
#: busy on passages, small enough for an 8192-token document to fit on a modest card. On CPU, small
#: batches keep a layer's activations in cache: 2,048 tokens ran 3,249 tok/s against 1,990 for 16,384
#: (bge-small shape, 2,000 passages, 2 cores; 1,024 gave 3,195).
DEFAULT_TOKEN_BUDGET = {"cuda": 65536, "cpu": 2048}
#: What one more padded batch costs, in padded tokens, where batches are padded (the CPU): the engine cuts a
#: batch of mixed lengths into parts where that saves more padding than this. bge-small shape on the 2-core
#: machine: a batch costs ~9–12 ms plus ~0.21 ms a padded token (45–55 tokens' worth; less for larger
#: models, whose tokens cost more), so a server's merged call of 21 queries of 4–40 words, padded to the
#: longest, cost ~3× its real tokens.
BATCH_OVERHEAD_TOKENS = {"cpu": 32}
#: How PyTorch allocates the pinned host memory outputs are copied into (see `_fast_pinned_memory`).
PINNED_SETTINGS = "pinned_use_cuda_host_register:True,pinned_num_register_threads:8"
#: Most inputs tokenized at a time on the packed path (the next chunk is tokenized while this one runs).
CHUNK = 4096
#: Characters in the first chunk: small, so the device starts early (~20k tokens of text); each later
#: chunk may hold CHUNK_GROWTH times more, so tokenization stays ahead of the device.
FIRST_CHUNK_CHARS = 1 << 17
CHUNK_GROWTH = 1.5
#: Inputs per tokenizer call: larger calls keep the Rust tokenizer's threads busier (100,000 passages on
#: a 16-core host: 2.90 s in calls of 256, 2.87 in 1,024, 2.28 in 4,096; a whole `bge eval` encode 4.28 →
#: 3.71 → 3.64 s), smaller ones free their results in shorter GIL holds (`Engine.tokenize`).
TOKENIZE_SLICE = 1024


def _check_lengths(tokenized: list[TokenizedItem], max_length: int) -> None:
    over = [i for i, t in enumerate(tokenized) if t.over_length]
    if over:
        shown = ", ".join(map(str, over[:20])) + (" …" if len(over) > 20 else "")
        raise ValueError(
            f"{len(over)} input(s) exceed max_length={max_length} tokens at index {shown}; "
            "pass truncate=True to cut them"
        )


@contextlib.contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a call that builds many outputs.

    Tens of thousands of lexical dicts and result rows trigger full collections, each scanning every
    object of the calling process (~35% of the time spent unpickling 40,000 M3 rows, measured on the
    2-core development machine).
    Outputs hold no reference cycles, so nothing waits longer to be freed; the collector resumes
    when the call ends (concurrent calls may resume it early, which only costs speed).

    Example:
        >>> with cycle_collection_paused():
        ...     rows = [{"id": i} for i in range(100_000)]
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _chars(item: Any) -> int:
    """Characters of an input: a text, or the texts of a pair."""
    if isinstance(item, str):
        return len(item)
    return sum(len(part) for part in item if isinstance(part, str)) if isinstance(item, (tuple, list)) else 1


def _chunk_end(items: list[Any], start: int, target: float) -> tuple[int, int]:
    """End of the chunk that starts at `start` and holds about `target` characters (at most CHUNK
    items, at least one), and the characters it holds."""
    end, chars = start, 0
    while end < len(items) and end - start < CHUNK and (end == start or chars < target):
        chars += _chars(items[end])
        end += 1
    return end, chars


def _chunks(items: list[Any]) -> list[tuple[int, list[Any]]]:
    """(start, items) spans: the first about FIRST_CHUNK_CHARS characters, then growing."""
    spans, start, budget = [], 0, float(FIRST_CHUNK_CHARS)
    while start < len(items):
        end, _ = _chunk_end(items, start, budget)
        spans.append((start, items[start:end]))
        start, budget = end, budget * CHUNK_GROWTH
    return spans


def place_rows(results: list[Any], indices: list[int], parts: list[HostOutputs],
               on_batch: Callable[[list[int], list[Any]], None] | None) -> None:
    """Build a batch's rows from its host outputs, put them at their input indices, tell `on_batch`.

    Example:
        >>> from bge_core.families.base import split_rows
        >>> results = [None, None]
        >>> place_rows(results, [1, 0], [HostOutputs({"x": np.eye(2)}, split_rows("x"))], None)
        >>> results[1].tolist()
        [1.0, 0.0]
    """
    rows = [row for part in parts for row in part.rows()]
    for index, row in zip(indices, rows):
        results[index] = row
    if on_batch is not None:
        on_batch(indices, rows)


class Engine:
    """Runs one loaded family on its device; safe to call from many threads.

    The tokenizer is guarded by its own lock (HF fast tokenizers are not thread-safe) and
    forwards are serialized per model, so concurrent callers get the same results as serial ones.

    Example:
        >>> engine = Engine(family, device=torch.device("cpu"))
        >>> outputs = engine.run(["hello", "world"], max_length=512, options={})
    """

    def __init__(
        self, family: Family, device: torch.device, token_budget: int | None = None, packed: bool | None = None,
        fp8: bool = False,
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
        if self.packed:
            family.fused_backbone = fused_encoder(family.backbone_module(), fp8=fp8)
            if family.fused_backbone is None:  # the transformers backbone runs the packed batches itself
                use_packed_attention(family.model)
        if fp8 and (not self.packed or family.fused_backbone is None):
            model_type = getattr(getattr(family.model, "config", None), "model_type", type(family.model).__name__)
            why = "packed=False was asked for" if not self.packed else f"this is a {model_type} model"
            raise ValueError(f"dtype='fp8' runs the packed encoder of BERT / XLM-R models (dense, BGE-M3, "
                             f"cross-encoders), and {why}: use fp32, fp16 or bf16")
        # Small batches (an online query, a server's merged queries) replay CUDA graphs instead of
        # launching kernels one by one.
        self.graphs = GraphCache(family, device) if self.packed and device.type == "cuda" else None
        self.batch_overhead = None if self.packed else BATCH_OVERHEAD_TOKENS.get(device.type)
        if device.type == "cuda":
            _fast_pinned_memory()
        self._tokenizer_lock = threading.Lock()
        self._forward_lock = threading.Lock()
        self.forward_calls = 0  # batches run (tests, benchmarks and the CLI's tokens/s read these)
        self.rows_forwarded = 0
        self.tokens_forwarded = 0

    def tokenize(self, items: list[Any], max_length: int, options: dict[str, Any]) -> list[TokenizedItem]:
        """Tokenize in slices of TOKENIZE_SLICE: freeing one huge batch of tokenizer results holds the
        GIL long enough to stall other threads (an event loop waiting on this work) for 100 ms and
        more; a slice's results free in a few milliseconds."""
        out: list[TokenizedItem] = []
        for start in range(0, len(items), TOKENIZE_SLICE):
            with self._tokenizer_lock:
                out.extend(self.family.tokenize(items[start : start + TOKENIZE_SLICE], max_length, options))
        return out

    def run(
        self,
        items: list[Any],
        *,
        max_length: int,
        options: dict[str, Any],
        truncate: bool = True,
        token_budget: int | None = None,
        show_progress: bool = False,
        on_batch: Callable[[list[int], list[Any]], None] | None = None,
        on_tokens: Callable[[list[int], list[int]], None] | None = None,
    ) -> list[Any]:
        """Compute the family's outputs for `items`, returned in input order.

        `on_batch`, if given, gets each batch's input indices and outputs as soon as they are built,
        while the device runs later batches (on several devices, from one thread per device, at the
        same time): a caller can gather outputs off the call's critical path. `on_tokens`, if given,
        gets input indices and the number of tokens each input runs with (special tokens included, after
        truncation) as soon as they are tokenized, before their forward: usage counts without a second
        tokenization.

        Raises:
            ValueError: `truncate=False` and some items exceed `max_length` (indices listed).
        """
        if not items:
            return []
        results: list[Any] = [None] * len(items)

        def deliver(indices: list[int], parts: list[HostOutputs]) -> None:
            place_rows(results, indices, parts, on_batch)

        stream = self.batches(items, max_length, options, truncate, token_budget or self.token_budget, on_tokens)
        # A disabled tqdm still costs tens of microseconds to make: a query's share of its latency.
        progress = tqdm(unit="tok", unit_scale=True, desc="encode") if show_progress else contextlib.nullcontext(_NoBar)
        with cycle_collection_paused(), progress as bar:
            self.drive(stream, options, deliver, bar)
        return results

    def batches(
        self, items: list[Any], max_length: int, options: dict[str, Any], truncate: bool, budget: int,
        on_tokens: Callable[[list[int], list[int]], None] | None = None,
    ) -> Iterator[tuple[list[int], list[TokenizedItem]]]:
        """(input indices, tokenized rows) of each batch, longest inputs first.

        Packed batches waste nothing on length differences, so with truncation on they are built
        from chunks of the input, each tokenized in a background thread while the device works on
        the previous one. Padded batches (and `truncate=False`, which must see every input first)
        tokenize everything, then sort globally.
        """
        spans = _chunks(items) if self.packed and truncate else [(0, items)]
        if len(spans) == 1:  # nothing to overlap with (e.g. one online query): no helper thread
            tokenized = self.tokenize(items, max_length, options)
            _tell_tokens(on_tokens, 0, tokenized)
            yield from self._batches_of(list(enumerate(tokenized)), max_length, truncate, budget, hold=False)
            return
        yield from self.chunk_batches(((start, part, budget) for start, part in spans), max_length, options, ahead=2,
                                      on_tokens=on_tokens)

    def chunk_batches(self, chunks: Iterator[tuple[int, list[Any], int]], max_length: int, options: dict[str, Any],
                      ahead: int, on_tokens: Callable[[list[int], list[int]], None] | None = None,
                      ) -> Iterator[tuple[list[int], list[TokenizedItem]]]:
        """Batches of a stream of (index of the first item, items, token budget) chunks, with truncation on.

        Up to `ahead` chunks are tokenized in a background thread while the device works. A chunk's
        last batch, if under half full, waits to be topped up by the next chunk (not the first
        chunk's: the device should start at once; not when no next chunk is known yet). `on_tokens`
        hears of each chunk's token counts (as in `run`) before its first batch.
        """
        with ThreadPoolExecutor(max_workers=1) as pool:
            queued: collections.deque = collections.deque()

            def take() -> None:
                chunk = next(chunks, None)
                if chunk is not None:
                    queued.append((chunk[0], chunk[2], pool.submit(self.tokenize, chunk[1], max_length, options)))

            for _ in range(ahead):
                take()
            held: list[tuple[int, TokenizedItem]] = []
            first = True
            while queued:
                start, budget, future = queued.popleft()
                tokenized = future.result()
                take()
                _tell_tokens(on_tokens, start, tokenized)
                rows = [*held, *enumerate(tokenized, start)]
                held = yield from self._batches_of(rows, max_length, True, budget, hold=not first and bool(queued))
                first = False

    def _batches_of(self, rows: list[tuple[int, TokenizedItem]], max_length: int, truncate: bool, budget: int,
                    hold: bool) -> Iterator[tuple[list[int], list[TokenizedItem]]]:
        """Yield the batches of (input index, row) pairs; with `hold`, return a final batch that is
        under half the budget instead of yielding it."""
        tokenized = [row for _, row in rows]
        if not truncate:
            _check_lengths(tokenized, max_length)
        lengths = [len(t.ids) for t in tokenized]
        groups = list(schedule.token_budget_batches(schedule.length_order(lengths), lengths, budget,
                                                    padded=not self.packed, batch_overhead=self.batch_overhead))
        kept = []
        if hold and groups and sum(lengths[i] for i in groups[-1]) < budget // 2:
            kept = groups.pop()
        for group in groups:
            yield [rows[i][0] for i in group], [tokenized[i] for i in group]
        return [rows[i] for i in kept]

    def drive(self, stream: Iterator[tuple[list[int], list[TokenizedItem]]], options: dict[str, Any],
              deliver: Callable[[list[int], list[HostOutputs]], None], bar: Any) -> None:
        """Run batches from `stream` on this engine, handing each batch's host outputs to `deliver`
        with their input indices (one part per piece the batch ran as: more after an out-of-memory split).

        A batch's host-side work (copies, building rows) is done only after the next two batches
        are queued on the device, so the two overlap.
        """
        in_flight: list[tuple[list[int], list[Any], int]] = []

        def settle(keep: int) -> None:
            while len(in_flight) > keep:
                indices, pendings, n_tokens = in_flight.pop(0)
                deliver(indices, [p.host_outputs() for p in pendings])
                bar.update(n_tokens)

        while True:
            nxt = next(stream, None)
            if nxt is None:
                break
            indices, rows = nxt

            def run_part(part: list[int], rows: list[TokenizedItem] = rows) -> list[Pending]:
                return [self._forward([rows[i] for i in part], options)]

            pendings = schedule.run_with_oom_split(list(range(len(rows))), run_part)
            in_flight.append((indices, pendings, sum(len(r.ids) for r in rows)))
            settle(keep=2)  # two batches queued ahead: a host hiccup does not idle the device
        settle(keep=0)

    def _forward(self, rows: list[TokenizedItem], options: dict[str, Any]) -> Pending:
        with self._forward_lock, torch.inference_mode():
            if not self.packed:
                out = self.family.forward(self._pad(rows), options)
            else:
                ids, lengths = _host_ids(rows)
                metas = [r.meta for r in rows]
                replayed = self.graphs.replay(ids, lengths, metas) if self.graphs is not None else None
                if replayed is None:
                    batch = packing.pack(ids, lengths, self.family.position_offset(), self.device, metas)
                    hidden = self.family.backbone_packed(batch)
                else:
                    batch, hidden = replayed
                out = self.family.heads_packed(hidden, batch, options)
            # Counted once the batch ran: a batch split after running out of memory counts as its halves.
            self.forward_calls += 1
            self.rows_forwarded += len(rows)
            self.tokens_forwarded += sum(len(r.ids) for r in rows)
            return out

    def _pack(self, rows: list[TokenizedItem]) -> PackedBatch:
        """The rows as one packed batch on the device (see `packing.pack`)."""
        ids, lengths = _host_ids(rows)
        return packing.pack(ids, lengths, self.family.position_offset(), self.device, [r.meta for r in rows])

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


class _NoBar:
    """The progress bar of a call that shows none."""

    @staticmethod
    def update(n: int) -> None:
        pass


def _tell_tokens(on_tokens: Callable[[list[int], list[int]], None] | None, start: int,
                 tokenized: list[TokenizedItem]) -> None:
    """Tell `on_tokens` the token counts of a tokenized span that starts at input `start`."""
    if on_tokens is not None:
        on_tokens(list(range(start, start + len(tokenized))), [len(t.ids) for t in tokenized])


def _host_ids(rows: list[TokenizedItem]) -> tuple[np.ndarray, np.ndarray]:
    """The rows' ids back to back and their lengths, as int64 arrays (the host's share of packing;
    the tokenizer thread may hold the GIL meanwhile)."""
    lengths = np.empty(len(rows), dtype=np.int64)
    lengths[:] = [len(r.ids) for r in rows]
    ids = np.fromiter(itertools.chain.from_iterable(r.ids for r in rows), dtype=np.int64, count=int(lengths.sum()))
    return ids, lengths


@functools.cache  # a process-wide allocator setting: once is enough
def _fast_pinned_memory() -> None:
    """Outputs are copied to pinned host memory, which PyTorch caches and reuses. A first call over a
    large corpus allocates all of it (all three BGE-M3 outputs of 20,000 passages: ~9 GB), and
    cudaHostAlloc does that at a few GB/s; malloc, then cudaHostRegister from several threads, is
    faster. Pinned settings the user gave in PYTORCH_ALLOC_CONF (or PYTORCH_CUDA_ALLOC_CONF) win."""
    if any("pinned" in os.environ.get(name, "") for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")):
        return
    # The accelerator-wide setter replaced the CUDA one (which now warns) in recent PyTorch.
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or getattr(
        torch.cuda.memory, "_set_allocator_settings", None)
    try:
        if setter is not None:
            setter(PINNED_SETTINGS)
    except RuntimeError:  # a PyTorch without these options: its default allocation stays
        pass
