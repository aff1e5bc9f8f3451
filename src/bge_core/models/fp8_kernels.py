"""Triton kernel of the fp8 forward (CUDA builds of PyTorch ship Triton; CPU builds do not, and the
fp8 path never runs there)."""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only PyTorch: the module imports, the kernel does not exist
    triton = None

if triton is not None:

    @triton.jit
    def _gelu_quantize_kernel(x_ptr, out_ptr, scale_ptr, n_cols, fp8_max, BLOCK: tl.constexpr):
        # One program per row; the whole row stays in registers, so `x` is read once.
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))  # GELU(0) = 0: padding cannot raise the max
        scale = tl.maximum(tl.max(tl.abs(y), axis=0), 1e-12) / fp8_max
        tl.store(out_ptr + row * n_cols + cols, (y / scale).to(tl.float8e4nv), mask=mask)
        tl.store(scale_ptr + row, scale)


def gelu_quantize_rows_triton(x: torch.Tensor, fp8_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 GELU(x) [T, N] and float32 row scales [T, 1] for a CUDA tensor x.

    Example:
        >>> values, scales = gelu_quantize_rows_triton(up, 448.0)  # doctest: +SKIP
    """
    if triton is None:
        raise RuntimeError("Triton is not installed")
    x = x.contiguous()
    rows, cols = x.shape
    out = torch.empty((rows, cols), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    if rows:
        block = triton.next_power_of_2(cols)
        _gelu_quantize_kernel[(rows,)](x, out, scale, cols, fp8_max, BLOCK=block, num_warps=4)  # 4 beat 8/16/32 (H200)
    return out, scale
