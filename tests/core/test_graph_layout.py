"""The host layout a CUDA graph replays (built on the CPU here: the layout is plain arrays)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bge_core.engine.graphs import SHORT_SPAN, SLOTS, _Graph, graph_span
from bge_core.engine.packing import pack


@pytest.mark.parametrize(("lengths", "bucket", "slots"),
                         [([5], 32, 1), ([3, 1, 7], 32, SLOTS), ([40] * 12, 512, SLOTS)])
def test_graph_batch_views_equal_the_packed_batch(lengths, bucket, slots):
    """The heads of a replayed batch read views of the graph's input buffer: the same ids, positions,
    offsets and sequence ids as the batch `pack` builds, and the filler after the real tokens."""
    rng = np.random.default_rng(0)
    lengths = np.array(lengths, dtype=np.int64)
    ids = rng.integers(5, 100, int(lengths.sum()))
    offset, pad = 2, 1
    graph = _Graph(graph=None, inputs=torch.zeros(3 * bucket + slots + 2, dtype=torch.long), hidden=None,
                   bucket=bucket, slots=slots, first_position=offset)
    graph.inputs.copy_(torch.from_numpy(graph.staged(ids, lengths, pad)))
    got = graph.batch(ids, lengths, ["m"] * len(lengths))
    want = pack(ids, lengths, offset, torch.device("cpu"))
    assert torch.equal(got.input_ids, want.input_ids)
    assert torch.equal(got.position_ids, want.position_ids)
    assert torch.equal(got.cu_seqlens.long(), want.cu_seqlens.long())
    assert torch.equal(got.seq_ids, want.seq_ids)
    assert torch.equal(got.starts, want.starts) and torch.equal(got.ends, want.ends)
    assert got.lengths == want.lengths and got.max_length == want.max_length and got.metas == ["m"] * len(lengths)
    n = len(ids)
    staged = graph.inputs
    assert (staged[n:bucket] == pad).all() and (staged[bucket + n : 2 * bucket] == offset).all()
    offsets = staged[2 * bucket : 2 * bucket + slots + 2]
    assert offsets[len(lengths) + 1 :].eq(bucket).all()  # the filler ends at the bucket, empty slots after it


def test_graph_span_is_short_only_where_every_sequence_fits_one_tile():
    assert graph_span(1024, SLOTS, SHORT_SPAN) == SHORT_SPAN
    assert graph_span(1024, SLOTS, SHORT_SPAN + 1) == 1024
    assert graph_span(SHORT_SPAN, SLOTS, 10) == SHORT_SPAN  # a bucket no longer than a tile has one span
    assert graph_span(256, 1, 10) == 256  # a single input's graph spans its bucket
