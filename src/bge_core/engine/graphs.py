"""CUDA graphs for single short inputs: an online query costs one graph replay instead of hundreds of
kernel launches from Python (launch overhead, not FLOPs, bounds batch-1 latency).

One graph per length bucket holds the backbone on a packed row of `bucket` tokens: the real
sequence, then the rest of the bucket as a second, ignored sequence (varlen attention keeps the
two apart, so the padding changes nothing in the real one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from bge_core.families.base import Family, PackedBatch

log = logging.getLogger(__name__)

#: Lengths (tokens) graphs are captured for; an input uses the first bucket longer than itself.
BUCKETS = (32, 64, 128, 256, 512)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    hidden: torch.Tensor
    filler_positions: torch.Tensor


class GraphCache:
    """Captures lazily, replays for one-sequence packed batches shorter than the largest bucket."""

    def __init__(self, family: Family, device: torch.device) -> None:
        self.family = family
        self.device = device
        self.graphs: dict[int, _Graph] = {}
        self.pool = None
        self.broken = False  # a model that cannot be captured runs eagerly from then on

    def fits(self, batch: PackedBatch) -> bool:
        return not self.broken and len(batch.lengths) == 1 and batch.lengths[0] < BUCKETS[-1]

    def backbone(self, batch: PackedBatch) -> torch.Tensor | None:
        """Token states of the batch's one sequence, or None when no graph can serve it."""
        n = batch.lengths[0]
        bucket = next(b for b in BUCKETS if b > n)
        graph = self.graphs.get(bucket)
        if graph is None:
            graph = self._capture(bucket)
            if graph is None:
                return None
        graph.input_ids[0, :n].copy_(batch.input_ids[0])
        graph.input_ids[0, n:].fill_(self.family.pad_token_id)
        graph.position_ids[0, :n].copy_(batch.position_ids[0])
        graph.position_ids[0, n:].copy_(graph.filler_positions[: bucket - n])
        graph.cu_seqlens[1:2].fill_(n)
        graph.graph.replay()
        return graph.hidden[:n]

    def _capture(self, bucket: int) -> _Graph | None:
        offset = self.family.position_offset()
        device = self.device
        filler = torch.arange(offset, offset + bucket, device=device)
        batch = PackedBatch(
            input_ids=torch.full((1, bucket), self.family.pad_token_id, dtype=torch.long, device=device),
            position_ids=filler.clone()[None],
            cu_seqlens=torch.tensor([0, bucket // 2, bucket], dtype=torch.int32, device=device),
            max_length=bucket,
            lengths=[bucket // 2, bucket - bucket // 2],
            seq_ids=torch.zeros(bucket, dtype=torch.long, device=device),
        )
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(2):  # warm-up outside the graph (lazy initialisation, autotuning)
                    self.family.backbone_packed(batch)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self.pool), torch.inference_mode():
                hidden = self.family.backbone_packed(batch)
        except (RuntimeError, torch.cuda.CudaError) as error:  # capture unsupported: stay eager
            log.warning("CUDA graph capture failed (%s); running eagerly", error)
            self.broken = True
            return None
        captured = _Graph(graph, batch.input_ids, batch.position_ids, batch.cu_seqlens, hidden, filler)
        self.graphs[bucket] = captured
        return captured
