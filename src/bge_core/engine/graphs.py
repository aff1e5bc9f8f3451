"""CUDA graphs for small packed batches: an online query, or the few queries a server merges into one
engine call, costs one graph replay instead of hundreds of kernel launches from Python (launch
overhead, not FLOPs, bounds small batches: eagerly, 20 short queries cost as much host time as 20,000
tokens of passages).

One graph per length bucket holds the backbone on a packed row of `bucket` tokens with room for up
to `SLOTS` sequences: the real sequences, then the rest of the bucket as one ignored filler
sequence, then empty sequences up to `SLOTS` (varlen attention keeps every sequence apart, so the
filler changes nothing in the real ones, and an empty sequence costs a kernel block that exits).

The attention kernel's grid also spans the longest sequence a graph was captured for, in tiles of
128 queries, for every slot: a graph captured for 1,024-token sequences launches 8 × 64 blocks a head
where 64 merged queries need 64. Batches whose sequences all fit one tile therefore replay a graph
captured for `SHORT_SPAN`-token sequences (the filler may be longer: it only loses rows nobody reads).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bge_core.engine.packing import host_layout
from bge_core.engine.tiled_attention import for_graph
from bge_core.families.base import Family, PackedBatch

log = logging.getLogger(__name__)

#: Token counts graphs are captured for; a batch uses the first bucket longer than its tokens.
BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)
#: Most sequences one graph takes (a server's merged queries: 64 clients give ~20 a call).
SLOTS = 64
#: Buckets that also get a graph for a single sequence (an online query): the attention kernel's
#: grid covers every slot, and 64 mostly idle slots cost a 16-token query ~110 µs of its ~0.9 ms on
#: an H200 (bench/probe_gpu.py query). Longer single inputs use the many-sequence graph.
SINGLE_BUCKETS = tuple(b for b in BUCKETS if b <= 512)
#: Longest sequence of a short-span graph: one query tile of the varlen flash kernel. A call of 64
#: merged queries (782 tokens, bucket 1,024) replayed in 2.39 ms on an H200 with the full span
#: (bench/probe_gpu.py calls).
SHORT_SPAN = 128


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    #: int64 on the device, one copy per replay: ids, positions [bucket each], offsets [slots + 2] (made
    #: int32 inside the graph), then the sequence id of each token [bucket] (read by the heads, not the graph).
    inputs: torch.Tensor
    hidden: torch.Tensor
    bucket: int
    slots: int
    first_position: int

    def staged(self, ids: np.ndarray, lengths: np.ndarray, pad_token_id: int) -> np.ndarray:
        """The graph's inputs for the packed sequences `ids` of `lengths`, laid out on the host: the real
        sequences, then the filler sequence (pad ids, first position), then empty sequences."""
        n, bucket, at = len(ids), self.bucket, _seq_ids_at(self.bucket, self.slots)
        cu, seq_ids, positions = host_layout(lengths, self.first_position)
        host = np.empty(at + bucket, dtype=np.int64)
        host[:n] = ids
        host[n:bucket] = pad_token_id
        host[bucket : bucket + n] = positions
        host[bucket + n : 2 * bucket] = self.first_position
        host[2 * bucket : 2 * bucket + len(cu)] = cu
        host[2 * bucket + len(cu) : at] = bucket
        host[at : at + n] = seq_ids
        host[at + n :] = len(lengths)
        return host

    def batch(self, ids: np.ndarray, lengths: np.ndarray, metas: list[Any]) -> PackedBatch:
        """The `PackedBatch` of these sequences as views of the graph's input buffer (valid until the
        next replay is staged: the heads' kernels are queued before it, on the same stream)."""
        n, bucket, at = len(ids), self.bucket, _seq_ids_at(self.bucket, self.slots)
        return PackedBatch(
            input_ids=self.inputs[:n][None],
            position_ids=self.inputs[bucket : bucket + n][None],
            cu_seqlens=self.inputs[2 * bucket : 2 * bucket + len(lengths) + 1],
            max_length=int(lengths.max()),
            lengths=lengths.tolist(),
            seq_ids=self.inputs[at : at + n],
            metas=metas,
        )


def _seq_ids_at(bucket: int, slots: int) -> int:
    """Where the sequence ids start in a graph's input buffer (after ids, positions and offsets)."""
    return 2 * bucket + slots + 2


class GraphCache:
    """Captures lazily, replays for packed batches of at most `SLOTS` sequences and fewer tokens than
    the largest bucket."""

    def __init__(self, family: Family, device: torch.device) -> None:
        self.family = family
        self.device = device
        self.pad_token_id = family.pad_token_id
        self.graphs: dict[tuple[int, int, int], _Graph] = {}  # by (bucket, slots, span)
        self.pool = None
        self.broken = False  # a model that cannot be captured runs eagerly from then on
        self.replays = 0  # batches served by a graph (tests and benchmarks read it)

    def fits(self, lengths: np.ndarray) -> bool:
        """Whether a graph can run sequences of these lengths."""
        return not self.broken and len(lengths) <= SLOTS and int(lengths.sum()) < BUCKETS[-1]

    def replay(self, ids: np.ndarray, lengths: np.ndarray, metas: list[Any]) -> tuple[PackedBatch, torch.Tensor] | None:
        """Run the backbone on packed sequences (`ids` back to back, of `lengths`) by replaying a graph:
        (the batch, as views of the graph's inputs, for the heads; token states [T, d]), or None when no
        graph can serve them. The host lays the inputs out and sends them in one copy.

        Example:
            >>> batch, hidden = engine.graphs.replay(np.array([0, 5, 2]), np.array([3]), [])  # doctest: +SKIP
        """
        if not self.fits(lengths):
            return None
        n = len(ids)
        bucket = next(b for b in BUCKETS if b > n)
        slots = 1 if len(lengths) == 1 and bucket in SINGLE_BUCKETS else SLOTS
        span = graph_span(bucket, slots, int(lengths.max()))
        graph = self.graphs.get((bucket, slots, span))
        if graph is None:
            graph = self._capture(bucket, slots, span)
            if graph is None:
                return None
        # Pageable memory: a reused pinned buffer needs an event recorded and waited for at each replay, and
        # did not make a query faster in its real call path on an H200 host (BENCHMARKS.md, sixth session).
        graph.inputs.copy_(torch.from_numpy(graph.staged(ids, lengths, self.pad_token_id)), non_blocking=True)
        graph.graph.replay()
        self.replays += 1
        return graph.batch(ids, lengths, metas), graph.hidden[:n]

    def _capture(self, bucket: int, slots: int, span: int) -> _Graph | None:
        offset = self.family.position_offset()
        device = self.device
        # The filler's positions only need to be valid ids: every one is the first position, so a
        # bucket may be longer than the model's position table. Captured with as many sequences as
        # a replay may have (the kernels' grids depend on it).
        at = _seq_ids_at(bucket, slots)
        inputs = torch.full((at + bucket,), bucket, dtype=torch.long, device=device)
        inputs[:bucket] = self.pad_token_id
        inputs[bucket : 2 * bucket] = offset
        inputs[2 * bucket] = 0
        inputs[2 * bucket + 1] = bucket // 2

        def backbone() -> torch.Tensor:
            # The offsets become int32 inside the graph, so a replay needs one copy of one buffer.
            batch = PackedBatch(
                input_ids=inputs[:bucket][None],
                position_ids=inputs[bucket : 2 * bucket][None],
                cu_seqlens=inputs[2 * bucket : at].to(torch.int32),
                max_length=span,
                lengths=[bucket // 2, bucket - bucket // 2] + [0] * (slots - 1),
                seq_ids=torch.zeros(bucket, dtype=torch.long, device=device),
            )
            return self.family.backbone_packed(batch)

        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            # The warm-up runs choose the graph's kernels too, so any kernel a capture needs is built first.
            with torch.cuda.stream(side), torch.inference_mode(), for_graph():
                for _ in range(2):  # warm-up outside the graph (lazy initialisation, autotuning)
                    backbone()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self.pool), torch.inference_mode(), for_graph():
                hidden = backbone()
        except (RuntimeError, torch.cuda.CudaError) as error:  # capture unsupported: stay eager
            log.warning("CUDA graph capture failed (%s); running eagerly", error)
            self.broken = True
            return None
        captured = _Graph(graph, inputs, hidden, bucket, slots, offset)
        self.graphs[bucket, slots, span] = captured
        return captured


def graph_span(bucket: int, slots: int, longest: int) -> int:
    """The longest sequence the graph that replays a batch was captured for: `SHORT_SPAN` where the
    batch's sequences all fit one query tile in a many-sequence graph, else the whole bucket.

    Example:
        >>> graph_span(1024, 64, 40), graph_span(1024, 64, 300), graph_span(1024, 1, 40)
        (128, 1024, 1024)
    """
    return SHORT_SPAN if slots > 1 and longest <= SHORT_SPAN < bucket else bucket
