"""Packed batches: sequences back to back in one row, with their offsets, positions and sequence ids.

Small batches (an online query, a server's merged queries) are laid out with numpy and sent in one
copy: each derived tensor costs a microsecond there instead of a kernel launch (~10 µs of host time
each, most of a query's host time). Large batches send ids and lengths and derive the rest on the
device, off the host's clock (numpy over 65,536 tokens would hold the GIL the tokenizer thread wants).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from bge_core.families.base import PackedBatch

#: Batches under this many tokens are laid out on the host.
SMALL_BATCH_TOKENS = 4096


def host_layout(lengths: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets [n + 1], sequence id of each token, position of each token) of packed sequences.

    Example:
        >>> [a.tolist() for a in host_layout(np.array([2, 3]), 0)]
        [[0, 2, 5], [0, 0, 1, 1, 1], [0, 1, 0, 1, 2]]
    """
    cu = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    seq_ids = np.repeat(np.arange(len(lengths)), lengths)
    return cu, seq_ids, np.arange(cu[-1]) - cu[:-1][seq_ids] + offset


def derive_on_host(ids: np.ndarray, lengths: np.ndarray, offset: int,
                   device: torch.device) -> tuple[torch.Tensor, ...]:
    """Packed ids, positions, sequence ids (int64) and offsets (int32) on `device`, in one copy.

    Example:
        >>> ids, positions, seq_ids, cu = derive_on_host(np.arange(5), np.array([2, 3]), 0, torch.device("cpu"))
        >>> positions.tolist(), seq_ids.tolist(), cu.tolist()
        ([0, 1, 0, 1, 2], [0, 0, 1, 1, 1], [0, 2, 5])
    """
    total = len(ids)
    cu, seq_ids, positions = host_layout(lengths, offset)
    # Pageable memory: pinning costs more than a copy this small saves.
    buffer = torch.from_numpy(np.concatenate([ids, positions, seq_ids, cu])).to(device, non_blocking=True)
    return (buffer[:total], buffer[total : 2 * total], buffer[2 * total : 3 * total],
            buffer[3 * total :].to(torch.int32))


def derive_on_device(ids: np.ndarray, lengths: np.ndarray, offset: int,
                     device: torch.device) -> tuple[torch.Tensor, ...]:
    """`derive_on_host` for large batches: ids and lengths go in one copy from pinned memory (which does not
    wait for kernels already queued, as a copy from pageable memory would) and the rest is derived on the
    device.

    Example:
        >>> derive_on_device(np.arange(5), np.array([2, 3]), 2, torch.device("cpu"))[1].tolist()
        [2, 3, 2, 3, 4]
    """
    total, n = len(ids), len(lengths)
    host = np.concatenate([ids, lengths])
    buffer = staging(device).to_device(host, device) if device.type == "cuda" else torch.from_numpy(host)
    ids_on_device, lengths_on_device = buffer[:total], buffer[total:]
    cu = torch.zeros(n + 1, dtype=torch.int32, device=buffer.device)
    cu[1:] = torch.cumsum(lengths_on_device, 0)
    seq_ids = torch.repeat_interleave(torch.arange(n, device=buffer.device), lengths_on_device, output_size=total)
    positions = torch.arange(total, device=buffer.device) - cu[:-1].long()[seq_ids] + offset
    return ids_on_device, positions, seq_ids, cu


def pack(ids: np.ndarray, lengths: np.ndarray, offset: int, device: torch.device,
         metas: list[Any] | None = None) -> PackedBatch:
    """A `PackedBatch` of sequences given as their concatenated `ids` and their `lengths`; positions
    restart at `offset` in every sequence.

    Example:
        >>> pack(np.arange(5), np.array([2, 3]), 0, torch.device("cpu")).position_ids.tolist()
        [[0, 1, 0, 1, 2]]
    """
    derive = derive_on_host if len(ids) < SMALL_BATCH_TOKENS else derive_on_device
    on_device, positions, seq_ids, cu = derive(ids, lengths, offset, device)
    return PackedBatch(
        input_ids=on_device[None],
        position_ids=positions[None],
        cu_seqlens=cu,
        max_length=int(lengths.max()),
        lengths=lengths.tolist(),
        seq_ids=seq_ids,
        metas=metas or [],
    )


class PinnedStaging:
    """Pinned host buffers, reused in turn, for the int64 arrays of large batches' host-to-device copies.

    ``Tensor.pin_memory()`` on each batch's fresh array cost the calling thread 1.3 ms a batch in a bf16
    passages run and 3.7 ms in an fp8 one (cProfile on an H200 host, bench/probe_gpu.py `fp8all3`), where
    that thread, not the GPU, bounds passages with all three outputs. A buffer is written again only once
    the copy that last read it has run (an event; long done, since the engine keeps two batches queued).

    Example:
        >>> staging(torch.device("cuda")).to_device(np.arange(5), torch.device("cuda"))  # doctest: +SKIP
        tensor([0, 1, 2, 3, 4], device='cuda:0')
    """

    #: Buffers in turn: more than the batches the engine keeps queued, so a reuse does not wait.
    SLOTS = 4
    #: Smallest buffer, in int64 values (1 MiB); buffers grow in powers of two.
    MIN_VALUES = 1 << 17

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor | None] = [None] * self.SLOTS
        self._copied: list[torch.cuda.Event | None] = [None] * self.SLOTS
        self._next = 0
        self._lock = threading.Lock()

    def to_device(self, values: np.ndarray, device: torch.device) -> torch.Tensor:
        """`values` (int64) on `device`, copied from a pinned buffer without waiting for queued kernels."""
        with self._lock:
            slot = self._next
            self._next = (slot + 1) % self.SLOTS
            if self._copied[slot] is not None:
                self._copied[slot].synchronize()
            buffer = self._buffers[slot]
            if buffer is None or buffer.numel() < values.size:
                size = max(self.MIN_VALUES, 1 << (values.size - 1).bit_length())
                buffer = self._buffers[slot] = torch.empty(size, dtype=torch.int64, pin_memory=True)
            staged = buffer[: values.size]
            staged.numpy()[:] = values
            on_device = staged.to(device, non_blocking=True)
            copied = self._copied[slot] = torch.cuda.Event()
            copied.record(torch.cuda.current_stream(device))
            return on_device


_STAGING: dict[torch.device, PinnedStaging] = {}
_STAGING_LOCK = threading.Lock()


def staging(device: torch.device) -> PinnedStaging:
    """The `PinnedStaging` of a CUDA device (one per device, made on first use).

    Example:
        >>> staging(torch.device("cuda", 0)) is staging(torch.device("cuda", 0))  # doctest: +SKIP
        True
    """
    with _STAGING_LOCK:  # made only when missing: this runs for every large batch
        found = _STAGING.get(device)
        if found is None:
            found = _STAGING[device] = PinnedStaging()
        return found
