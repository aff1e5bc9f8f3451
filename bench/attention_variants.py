"""Variants of the tiled attention kernel measured by `probe_gpu.py longattn` (not used by the engine).

`tma`: keys and values read through Hopper's tensor memory accelerator (host-made tensor descriptors
over the packed [T, H × D] rows), queries as in the engine's kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from bge_core.engine.tiled_attention import _key_tile


@triton.jit(do_not_specialize=["longest"])
def _tma_kernel(q_ptr, k_desc, v_desc, out_ptr, cu_ptr, q_row, out_row, longest, scale_log2,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr):
    tile = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    start = tl.load(cu_ptr + seq)
    length = tl.minimum(tl.load(cu_ptr + seq + 1) - start, longest)
    if tile * BLOCK_M < length:
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        column = head * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
        row_ok = rows < length
        q = tl.load(q_ptr + (start + rows).to(tl.int64)[:, None] * q_row + column, mask=row_ok[:, None], other=0.0)
        best = tl.full([BLOCK_M], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        offsets = tl.arange(0, BLOCK_N)
        full = length - length % BLOCK_N
        first_column = head * HEAD_DIM
        for first_key in tl.range(0, full, BLOCK_N, num_stages=STAGES):
            k = k_desc.load([start + first_key, first_column])
            v = v_desc.load([start + first_key, first_column])
            best, total, acc = _key_tile(q, k, v, best, total, acc, scale_log2, offsets, False)
        if full < length:
            # Rows past the sequence's end are another sequence's (or zeros past the batch): masked out.
            k = k_desc.load([start + full, first_column])
            v = v_desc.load([start + full, first_column])
            best, total, acc = _key_tile(q, k, v, best, total, acc, scale_log2, full + offsets < length, True)
        out = acc / total[:, None]
        tl.store(out_ptr + (start + rows).to(tl.int64)[:, None] * out_row + column, out.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None])


def tma_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, longest: int,
                  tiles: tuple[int, int, int, int]) -> torch.Tensor:
    """[T, H, D] attention of packed sequences with keys and values read by TMA."""
    block_m, block_n, warps, stages = tiles
    tokens, heads, head_dim = q.shape
    out = torch.empty((tokens, heads, head_dim), dtype=q.dtype, device=q.device)
    k2, v2 = k.flatten(1), v.flatten(1)
    k_desc = TensorDescriptor(k2, list(k2.shape), list(k2.stride()), [block_n, head_dim])
    v_desc = TensorDescriptor(v2, list(v2.shape), list(v2.stride()), [block_n, head_dim])
    _tma_kernel[(triton.cdiv(longest, block_m), heads, cu.shape[0] - 1)](
        q, k_desc, v_desc, out, cu, q.stride(0), out.stride(0), longest, head_dim ** -0.5 * 1.4426950408889634,
        HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages, num_warps=warps)
    return out
