"""Attention over short packed sequences: small Triton tiles per (sequence, head).

PyTorch's varlen flash kernel works in tiles of 128 queries × 128 keys; a 16-token query leaves most of
a tile idle and still pays for it. Here a program takes `TILES` query rows of one sequence and head and
walks that sequence's keys in tiles, so the work follows each sequence's length, and rows past a
sequence's end (a graph's unused slots, the tiles a short query does not reach) cost programs that exit.
A layer's attention on one H200 (bench/probe_gpu.py shortattn, bge-m3's 16 heads × 64): one 16-token
query 2.4 µs against flash's 6.0; 64 merged queries 9.2 against 28.1; 4,000 queries of 8–40 tokens
0.37 ms against 1.46; 800 passages of 40–128 tokens 0.25 against 0.32 (100–128 tokens: equal). The
math is the flash kernel's: scores and an online softmax in float32, probabilities rounded to the input
precision before the product with V.

Only where kernels are compiled (after a warm-up, `models/compiled.py`): the kernel's first use in a
process compiles it (or loads Triton's cache), which a one-shot job must not pay mid-call. Set
``BGE_CORE_SHORT_ATTENTION=0`` to use the flash kernel everywhere (for A/B measurements).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only PyTorch: the module imports, the kernel does not exist
    triton = None

#: Longest sequence (and most tokens per program) the kernel takes: one flash query tile.
LONGEST = 128
#: Query rows a program takes, keys a step, warps a program: the fastest of seven tilings on every layout
#: measured (one query to 4,000 queries, 40–128-token passages; one H200, bench/probe_gpu.py shortattn).
TILES = (64, 32, 4)
#: Fewest tokens of an eager (not graph-captured) batch the kernel takes: 128 merged queries (1,586
#: tokens, eager) took 14.4 ms a call with it against 12.6 with flash, bound by launches from Python.
EAGER_TOKENS = 8192
#: Set to "0" to keep PyTorch's flash kernel for short sequences too.
ENV = "BGE_CORE_SHORT_ATTENTION"

if triton is not None:

    # `longest` varies from batch to batch: specialising on it (Triton does for ints divisible by 16)
    # would build a variant mid-call the first time an eager batch's longest text is not.
    @triton.jit(do_not_specialize=["longest"])
    def _short_attention_kernel(q_ptr, k_ptr, v_ptr, out_ptr, cu_ptr, q_row, k_row, v_row, out_row, longest,
                                scale_log2, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        seq = tl.program_id(0)
        head = tl.program_id(1)
        start = tl.load(cu_ptr + seq).to(tl.int64)
        # A sequence longer than `longest` (a graph's filler) keeps only rows nobody reads: its work is capped.
        length = tl.minimum(tl.load(cu_ptr + seq + 1).to(tl.int64) - start, longest)
        rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
        if tl.program_id(2) * BLOCK_M < length:  # else: past this sequence's end (an empty slot, a short one)
            column = head * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
            row_ok = rows < length
            q = tl.load(q_ptr + (start + rows)[:, None] * q_row + column, mask=row_ok[:, None], other=0.0)
            best = tl.full([BLOCK_M], float("-inf"), tl.float32)
            total = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
            for first_key in range(0, length, BLOCK_N):
                keys = first_key + tl.arange(0, BLOCK_N)
                key_ok = keys < length
                k = tl.load(k_ptr + (start + keys)[:, None] * k_row + column, mask=key_ok[:, None], other=0.0)
                v = tl.load(v_ptr + (start + keys)[:, None] * v_row + column, mask=key_ok[:, None], other=0.0)
                scores = tl.where(key_ok[None, :], tl.dot(q, tl.trans(k)) * scale_log2, float("-inf"))
                new_best = tl.maximum(best, tl.max(scores, 1))
                rescale = tl.exp2(best - new_best)
                probs = tl.exp2(scores - new_best[:, None])
                total = total * rescale + tl.sum(probs, 1)
                acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v)
                best = new_best
            out = acc / total[:, None]
            tl.store(out_ptr + (start + rows)[:, None] * out_row + column, out.to(out_ptr.dtype.element_ty),
                     mask=row_ok[:, None])


#: Set while the graph cache runs a backbone for a graph (its warm-up runs and the capture alike, so the
#: kernel is built before a capture, never during one).
_FOR_GRAPH: contextvars.ContextVar[bool] = contextvars.ContextVar("bge_short_attention_for_graph", default=False)
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


def short_attention_fits(q: torch.Tensor, k: torch.Tensor, longest: int, causal: bool) -> bool:
    """Whether `short_attention` takes this call: CUDA, half precision, sequences of ≤ `LONGEST` tokens,
    no causal mask, as many key heads as query heads, a head size of 16–128 (a power of two); and a
    forward for a CUDA graph (`for_graph`) or at least `EAGER_TOKENS` tokens (a Triton launch from
    Python costs more host time than a small eager batch's attention saves)."""
    head_dim = q.shape[-1]
    return (
        triton is not None
        and not _failed
        and q.is_cuda
        and not causal
        and 0 < longest <= LONGEST
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
    log.warning("the short-attention Triton kernel is unavailable (%s: %s); using flash attention",
                type(error).__name__, error)


def short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, longest: int,
                    scale: float | None = None) -> torch.Tensor:
    """[T, H, D] attention of packed sequences (bounds in `cu_seqlens`), each at most `longest` ≤ 128
    tokens long; rows of tokens in no sequence are left unwritten, as the flash kernel leaves them.

    Example:
        >>> cu = torch.tensor([0, 5, 16], dtype=torch.int32, device="cuda")  # doctest: +SKIP
        >>> short_attention(q, k, v, cu, 11).shape  # doctest: +SKIP
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
    block_m, block_n, warps = TILES
    _short_attention_kernel[(sequences, heads, triton.cdiv(int(longest), block_m))](
        q, k, v, out, cu_seqlens, q.stride(0), k.stride(0), v.stride(0), out.stride(0), int(longest), scale_log2,
        HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
    return out
