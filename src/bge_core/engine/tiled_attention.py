"""Attention of packed sequences in small Triton tiles, one program per (query tile, head, sequence).

PyTorch's varlen flash kernel (FlashAttention-2) works in tiles of 128 queries × 128 keys. A 16-token
query leaves most of a tile idle and still pays for it, and on Hopper the kernel runs long sequences
at ~285 TFLOP/s. Here a program takes `TILES` query rows of one sequence and head and walks that
sequence's keys in tiles (the full ones unmasked, so their loads pipeline; one masked tail), so the
work follows each sequence's length, and rows past a sequence's end (a graph's unused slots, the tiles
a short query does not reach) cost programs that exit. A layer's attention on one H200, bge-m3's 16
heads × 64 (bench/probe_gpu.py `shortattn`, `longattn`): one 16-token query 2.4 µs against flash's 6.0;
64 merged queries 9.2 against 28.1; 600 passages of 8–473 tokens 0.27 ms against 0.53; eight documents
of 512–8,190 tokens 0.72 ms against 1.10 (439 against 286 TFLOP/s, keys and values read by TMA, see
`LONG_TILES`). The math is the flash kernel's:
scores and an online softmax in float32, probabilities rounded to the input precision before the
product with V.

Only where kernels are compiled (after a warm-up, `models/compiled.py`): the kernel's first use in a
process compiles it (or loads Triton's cache), which a one-shot job must not pay mid-call. Set
``BGE_CORE_TILED_ATTENTION=0`` to use the flash kernel everywhere (for A/B measurements).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch

log = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only PyTorch: the module imports, the kernel does not exist
    triton = None
try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # no Triton, or one without host-made tensor descriptors: keys and values by pointers
    TensorDescriptor = None

#: Query rows a program takes, keys a step, warps a program, pipeline stages of the key loop: the fastest
#: of seven tilings from one query to 4,000 (bench/probe_gpu.py shortattn) and of ten on passages and long
#: documents (`longattn`), one H200; within 2% of the fastest wherever another won.
TILES = (64, 32, 4, 3)
#: Tiles where the longest sequence exceeds `TMA_FROM` tokens on a GPU with TMA (Hopper's tensor memory
#: accelerator, compute capability 9+), which then reads keys and values: eight documents of 512–8,190 tokens
#: 0.72 ms a layer against 0.81 by pointers (436 against 388 TFLOP/s), while passages of ≤ 512 tokens are
#: 3–9% slower by TMA (bench/probe_gpu.py longattn, one H200).
LONG_TILES = (64, 64, 4, 3)
TMA_FROM = 1024
#: Fewest tokens of an eager (not graph-captured) batch the kernel takes: 128 merged queries (1,586
#: tokens, eager) took 14.4 ms a call with it against 12.6 with flash, bound by launches from Python.
EAGER_TOKENS = 8192
#: Set to "0" to keep PyTorch's flash kernel everywhere.
ENV = "BGE_CORE_TILED_ATTENTION"
#: Most sequences a launch takes (the grid's third axis); a batch of more runs in several launches.
MAX_SEQUENCES = 65535

if triton is not None:

    @triton.jit
    def _key_tile(q, k, v, best, total, acc, scale_log2, key_ok, MASKED: tl.constexpr):
        """One step of the online softmax over a tile of keys (`best`: each row's largest scaled score)."""
        scores = tl.dot(q, tl.trans(k))
        if MASKED:
            scores = tl.where(key_ok[None, :], scores, float("-inf"))
        # The scale is positive, so the largest score scales to the largest scaled score; scaling and
        # subtracting the row's best then take one fused multiply-add a score.
        new_best = tl.maximum(best, tl.max(scores, 1) * scale_log2)
        rescale = tl.exp2(best - new_best)
        probs = tl.exp2(scores * scale_log2 - new_best[:, None])
        total = total * rescale + tl.sum(probs, 1)
        # The rescaled accumulator is the product's own accumulator: no separate sum.
        acc = tl.dot(probs.to(v.dtype), v, acc * rescale[:, None])
        return new_best, total, acc

    @triton.jit
    def _keys_and_values(k_src, v_src, first_key, offsets, key_ok, column, k_row, v_row, first_column,
                         MASKED: tl.constexpr, TMA: tl.constexpr):
        """The tile of keys and values from token `first_key` on: by TMA (rows past the sequence belong to
        another one, or are zeros past the batch, and are masked out of the scores), or by pointers,
        masked where asked."""
        # One branch per case: Triton compiles the statements after a `return` too.
        if TMA:
            k = k_src.load([first_key.to(tl.int32), first_column])
            v = v_src.load([first_key.to(tl.int32), first_column])
        elif MASKED:
            keys = first_key + offsets
            k = tl.load(k_src + keys[:, None] * k_row + column, mask=key_ok[:, None], other=0.0)
            v = tl.load(v_src + keys[:, None] * v_row + column, mask=key_ok[:, None], other=0.0)
        else:
            keys = first_key + offsets
            k = tl.load(k_src + keys[:, None] * k_row + column)
            v = tl.load(v_src + keys[:, None] * v_row + column)
        return k, v

    # `longest` varies from batch to batch: specialising on it (Triton does for ints divisible by 16)
    # would build a variant mid-call the first time an eager batch's longest text is not.
    @triton.jit(do_not_specialize=["longest"])
    def _tiled_attention_kernel(q_ptr, k_src, v_src, out_ptr, cu_ptr, q_row, k_row, v_row, out_row, longest,
                                scale_log2, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                STAGES: tl.constexpr, TMA: tl.constexpr):
        tile = tl.program_id(0)
        head = tl.program_id(1)
        seq = tl.program_id(2)
        start = tl.load(cu_ptr + seq).to(tl.int64)
        # A sequence longer than `longest` (a graph's filler) keeps only rows nobody reads: its work is capped.
        length = tl.minimum(tl.load(cu_ptr + seq + 1).to(tl.int64) - start, longest)
        if tile * BLOCK_M < length:  # else: past this sequence's end (an empty slot, a short one)
            rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
            column = head * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
            row_ok = rows < length
            q = tl.load(q_ptr + (start + rows)[:, None] * q_row + column, mask=row_ok[:, None], other=0.0)
            best = tl.full([BLOCK_M], float("-inf"), tl.float32)
            total = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
            offsets = tl.arange(0, BLOCK_N)
            full = length - length % BLOCK_N
            for first_key in tl.range(0, full, BLOCK_N, num_stages=STAGES):
                k, v = _keys_and_values(k_src, v_src, start + first_key, offsets, None, column, k_row, v_row,
                                        head * HEAD_DIM, False, TMA)
                best, total, acc = _key_tile(q, k, v, best, total, acc, scale_log2, offsets, False)
            if full < length:
                key_ok = full + offsets < length
                k, v = _keys_and_values(k_src, v_src, start + full, offsets, key_ok, column, k_row, v_row,
                                        head * HEAD_DIM, True, TMA)
                best, total, acc = _key_tile(q, k, v, best, total, acc, scale_log2, key_ok, True)
            out = acc / total[:, None]
            tl.store(out_ptr + (start + rows)[:, None] * out_row + column, out.to(out_ptr.dtype.element_ty),
                     mask=row_ok[:, None])


#: Set while the graph cache runs a backbone for a graph (its warm-up runs and the capture alike, so the
#: kernel is built before a capture, never during one).
_FOR_GRAPH: contextvars.ContextVar[bool] = contextvars.ContextVar("bge_tiled_attention_for_graph", default=False)
_failed = False


@contextlib.contextmanager
def for_graph() -> Iterator[None]:
    """Within: forwards are for a CUDA graph, where a kernel's launch cost is paid once, at capture.

    Example:
        >>> with for_graph():
        ...     pass
    """
    token = _FOR_GRAPH.set(True)
    try:
        yield
    finally:
        _FOR_GRAPH.reset(token)


def tiled_attention_fits(q: torch.Tensor, k: torch.Tensor, longest: int, causal: bool) -> bool:
    """Whether `tiled_attention` takes this call: CUDA, half precision, no causal mask, as many key heads
    as query heads, a head size of 16–128 (a power of two); and a forward for a CUDA graph (`for_graph`)
    or at least `EAGER_TOKENS` tokens (a Triton launch from Python costs more host time than a small
    eager batch's attention saves)."""
    head_dim = q.shape[-1]
    return (
        triton is not None
        and not _failed
        and q.is_cuda
        and not causal
        and longest > 0
        and q.dtype in (torch.float16, torch.bfloat16)
        and k.shape[1] == q.shape[1]
        and 16 <= head_dim <= 128
        and head_dim & (head_dim - 1) == 0
        and os.environ.get(ENV, "1") != "0"
        and (q.shape[0] >= EAGER_TOKENS or _FOR_GRAPH.get())
    )


def kernel_failed(error: Exception) -> None:
    """Record that the kernel cannot run here (Triton cannot build it): flash from now on.

    Example:
        >>> kernel_failed(RuntimeError("no compiler"))  # doctest: +SKIP
    """
    global _failed
    _failed = True
    log.warning("the tiled-attention Triton kernel is unavailable (%s: %s); using flash attention",
                type(error).__name__, error)


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, longest: int,
                    scale: float | None = None) -> torch.Tensor:
    """[T, H, D] attention of packed sequences (bounds in `cu_seqlens`), each read up to `longest` tokens
    (the longest real sequence); rows of tokens in no sequence are left unwritten, as the flash kernel
    leaves them.

    Example:
        >>> cu = torch.tensor([0, 5, 16], dtype=torch.int32, device="cuda")  # doctest: +SKIP
        >>> tiled_attention(q, k, v, cu, 11).shape  # doctest: +SKIP
        torch.Size([16, 16, 64])
    """
    if triton is None:
        raise RuntimeError("Triton is not installed")
    tokens, heads, head_dim = q.shape
    out = torch.empty((tokens, heads, head_dim), dtype=q.dtype, device=q.device)
    sequences = cu_seqlens.shape[0] - 1
    if sequences <= 0 or tokens == 0:
        return out
    if not (q.stride(2) == k.stride(2) == v.stride(2) == 1 and q.stride(1) == k.stride(1) == v.stride(1) == head_dim):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    scale_log2 = (head_dim ** -0.5 if scale is None else scale) * 1.4426950408889634  # exp2 instead of exp
    tma = longest > TMA_FROM and _has_tma(q.device) and all(_tma_aligned(x) for x in (k, v))
    block_m, block_n, warps, stages = LONG_TILES if tma else TILES
    k_src, v_src = (_descriptor(k, block_n), _descriptor(v, block_n)) if tma else (k, v)
    for first in range(0, sequences, MAX_SEQUENCES):
        bounds = cu_seqlens[first : min(sequences, first + MAX_SEQUENCES) + 1]
        _tiled_attention_kernel[(triton.cdiv(int(longest), block_m), heads, bounds.shape[0] - 1)](
            q, k_src, v_src, out, bounds, q.stride(0), k.stride(0), v.stride(0), out.stride(0), int(longest),
            scale_log2, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages, TMA=tma, num_warps=warps)
    return out


def _descriptor(x: torch.Tensor, rows: int) -> Any:
    """A TMA descriptor of [T, H, D] rows (one head's D values at a time, `rows` tokens a tile)."""
    flat = x.flatten(1)  # a view: heads and head values are contiguous (checked by the caller)
    return TensorDescriptor(flat, list(flat.shape), list(flat.stride()), [rows, x.shape[2]])


def _tma_aligned(x: torch.Tensor) -> bool:
    """TMA reads rows that start at 16-byte boundaries."""
    return x.data_ptr() % 16 == 0 and x.stride(0) * x.element_size() % 16 == 0


@functools.cache
def _has_tma(device: torch.device) -> bool:
    """Whether keys and values can be read by TMA on this device (Hopper or later, and a Triton that makes
    descriptors on the host)."""
    # ROCm reports its own architectures as capabilities (an MI300 as 9.4): TMA is NVIDIA's.
    if TensorDescriptor is None or torch.version.hip is not None:
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9
