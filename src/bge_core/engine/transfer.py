"""Moving a worker's batch outputs to the calling process.

A batch of BGE-M3 outputs with ColBERT vectors is ~150 MB of host arrays (the heads' outputs before
they become per-row results, which the calling process builds). Pickling them through a pipe copies
them three times; writing them into a fresh shared-memory segment per batch costs a page fault per
4 KiB on both sides (≈100 ms for 133 MB, bench/). So each worker owns one ring of shared memory,
mapped and faulted in once at start: a batch's arrays are copied into the ring, the pickle of the
rest (with the arrays out of band, protocol 5) goes through the result queue, and the calling
process copies the arrays out into its own memory and hands the space back by advancing a shared
counter.

Example:
    >>> import multiprocessing
    >>> released = multiprocessing.get_context("spawn").RawValue("Q", 0)
    >>> ring = OutputRing.create(1 << 20, released)            # worker side
    >>> reader = RingReader(ring.name, ring.size, released)    # calling side
    >>> float(reader.read(ring.write([np.ones(4096)]))[0].sum())
    4096.0
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import time
import uuid
from typing import Any

import numpy as np
import torch

#: Arrays at least this large travel in the ring; smaller ones stay in the pickle.
RING_ARRAY_BYTES = 4096
#: Each worker's ring: 1 GiB holds several batches of ColBERT vectors at the default token budget.
RING_BYTES = 1 << 30
_ALIGN = 64


def _plan(outputs: list[Any]) -> tuple[bytes, list[np.ndarray]]:
    """Pickle `outputs` with large arrays out of band. Returns the pickle and, in order, the bytes of
    each out-of-band array (views, not copies)."""
    regions: list[np.ndarray] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if not isinstance(raw.obj, np.ndarray) or raw.nbytes < RING_ARRAY_BYTES:
            return True  # stays in the pickle
        regions.append(np.frombuffer(raw, dtype=np.uint8))
        return False

    return pickle.dumps(outputs, protocol=5, buffer_callback=out_of_band), regions


def _map(path: str, size: int, create: bool) -> mmap.mmap:
    """Map a file in /dev/shm, every page faulted in now (MAP_POPULATE) rather than one by one later.

    A new file's pages are allocated first (posix_fallocate): a tmpfs without room then fails here
    with an OSError, instead of killing the process with SIGBUS at a later write.
    """
    fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
    try:
        if create:
            try:
                os.ftruncate(fd, size)
                os.posix_fallocate(fd, 0, size)
            except OSError:
                os.unlink(path)
                raise
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


class OutputRing:
    """A worker's ring of shared memory for batch outputs (see the module docstring).

    `written` counts bytes handed out (the ring position is it modulo `size`); the reader's
    `released` counter says how far the calling process has copied. A batch whose arrays do not fit
    in half the ring is pickled whole instead.
    """

    def __init__(self, name: str, size: int, memory: mmap.mmap, released: Any) -> None:
        self.name, self.size, self.released = name, size, released
        self._memory = memory
        self._bytes = torch.from_numpy(np.frombuffer(memory, dtype=np.uint8))
        self.written = 0

    @classmethod
    def create(cls, size: int, released: Any) -> OutputRing:
        name = f"/dev/shm/bge-core-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return cls(name, size, _map(name, size, create=True), released)

    def write(self, outputs: list[Any]) -> tuple:
        """Copy `outputs`' arrays into the ring (waiting for space) and return the message for the reader."""
        data, regions = _plan(outputs)
        need = sum(-(-r.nbytes // _ALIGN) * _ALIGN for r in regions)
        if need > self.size // 2:
            return pickled(outputs)
        start = self.written
        if start % self.size + need > self.size:  # no wrapping inside a batch: skip the ring's tail
            start += self.size - start % self.size
        end = start + need
        while end - self.released.value > self.size:  # the reader has not copied out older batches yet
            time.sleep(0.0005)
        offsets, at = [], start % self.size
        for region in regions:  # torch copies release the GIL
            self._bytes[at : at + region.nbytes].copy_(torch.from_numpy(region))
            offsets.append((at, region.nbytes))
            at += -(-region.nbytes // _ALIGN) * _ALIGN
        self.written = end
        return ("ring", data, offsets, end)

    def unlink(self) -> None:
        try:
            os.unlink(self.name)
        except FileNotFoundError:
            pass


class RingReader:
    """The calling process's side of one worker's `OutputRing`."""

    def __init__(self, name: str, size: int, released: Any) -> None:
        self._memory = _map(name, size, create=False)
        os.unlink(name)  # both sides have it mapped: nothing is left in /dev/shm if either dies
        self._bytes = torch.from_numpy(np.frombuffer(self._memory, dtype=np.uint8))
        self.released = released

    def read(self, message: tuple) -> list[Any]:
        """The outputs of one `OutputRing.write` message; its ring space is handed back."""
        return read_message(message, self)

    def close(self) -> None:
        self._bytes = None
        with contextlib.suppress(BufferError):  # arrays still viewing the mapping keep it alive
            self._memory.close()

    def skip(self, message: tuple) -> None:
        """Hand back the ring space of a message whose outputs nobody wants (a failed call's)."""
        if message[0] == "ring":
            self.released.value = max(self.released.value, message[-1])

    def copy_out(self, offsets: list[tuple[int, int]], end: int) -> list[np.ndarray]:
        regions = []
        for at, size in offsets:
            region = np.empty(size, dtype=np.uint8)
            torch.from_numpy(region).copy_(self._bytes[at : at + size])
            regions.append(region)
        self.released.value = max(self.released.value, end)
        return regions


def read_message(message: tuple, reader: RingReader | None) -> list[Any]:
    """Outputs from a worker's message: pickled whole, or pickled with arrays in its ring."""
    if message[0] == "pickle":
        return pickle.loads(message[1])
    _, data, offsets, end = message
    if reader is None:
        raise RuntimeError("a ring message arrived from a worker without a ring")
    return pickle.loads(data, buffers=reader.copy_out(offsets, end))


def pickled(outputs: list[Any]) -> tuple:
    """The message for outputs sent whole through the pipe (no shared memory)."""
    return ("pickle", pickle.dumps(outputs, protocol=pickle.HIGHEST_PROTOCOL))
