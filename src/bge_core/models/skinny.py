"""Linear layers of a few tokens (an online query) as one Triton kernel each (CUDA).

At 16 tokens an encoder layer's GEMMs only stream their weights, yet cuBLAS runs them at about a
quarter of the card's bandwidth (5–6 µs each for 6–8 MB of weights on an H200) and splits the
output projection in two kernels (split-K, then a reduction): 0.56 ms of a query's 0.89 ms replay
(bench/probe_gpu.py query). Here each program reads a strip of `BLOCK_N` weight rows once and
multiplies all the tokens by it, with the bias, the residual and the GELU in the epilogue.

Like the compiled layer tail (models/compiled.py), the kernel is compiled only once a warm-up has run
in the process (a second or so the first time, cached on disk after): before, and wherever it cannot
be compiled, the same math runs through cuBLAS.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

from bge_core.models.compiled import compiling_allowed

log = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only PyTorch: the module imports, the kernel does not exist
    triton = None

#: Most tokens a skinny call takes (one tile of rows; larger batches use cuBLAS).
MAX_TOKENS = 64
#: Set BGE_CORE_SKINNY=0 to run every linear layer through cuBLAS (measuring, debugging).
ENABLED = os.environ.get("BGE_CORE_SKINNY", "1") != "0"
_failed = False  # the kernel could not be compiled or launched here: cuBLAS from then on
BLOCK_N = 16
BLOCK_K = 256

if triton is not None:

    @triton.jit(do_not_specialize=["M"])  # one compile serves every token count
    def _skinny_kernel(x_ptr, w_ptr, b_ptr, r_ptr, y_ptr, M, N, K,
                       HAS_RESIDUAL: tl.constexpr, GELU: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = tl.arange(0, BLOCK_M)
        row_ok = rows[:, None] < M
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            ks = k + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=row_ok, other=0.0)
            w = tl.load(w_ptr + cols[:, None] * K + ks[None, :])
            acc += tl.dot(x, tl.trans(w))
        acc += tl.load(b_ptr + cols).to(tl.float32)[None, :]
        if GELU:
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        out = rows[:, None] * N + cols[None, :]
        if HAS_RESIDUAL:
            acc += tl.load(r_ptr + out, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=row_ok)


def fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `skinny_linear` takes x [T, K] @ weight [N, K]ᵀ (CUDA, half precision, few tokens,
    N and K multiples of the tile).

    Example:
        >>> fits(torch.zeros(16, 1024), torch.zeros(1024, 1024))  # CPU tensors: never
        False
    """
    tokens, k = x.shape
    n = weight.shape[0]
    return (triton is not None and ENABLED and not _failed and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
            and 0 < tokens <= MAX_TOKENS and n % BLOCK_N == 0 and k % BLOCK_K == 0
            and x.is_contiguous() and weight.is_contiguous() and compiling_allowed())


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None = None,
                  gelu: bool = False) -> torch.Tensor:
    """``act(x @ weight.T + bias) + residual`` for a few tokens (act: exact GELU or none), in one kernel
    where `fits` says so, else with torch.

    Example:
        >>> y = skinny_linear(x, w_up, b_up, gelu=True)  # doctest: +SKIP
    """
    global _failed
    if fits(x, weight):
        tokens, k = x.shape
        n = weight.shape[0]
        y = torch.empty((tokens, n), dtype=x.dtype, device=x.device)
        block_m = max(16, triton.next_power_of_2(tokens))
        try:
            _skinny_kernel[(n // BLOCK_N,)](x, weight, bias, y if residual is None else residual.contiguous(), y,
                                            tokens, n, k, HAS_RESIDUAL=residual is not None, GELU=gelu,
                                            BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=4,
                                            num_stages=3)
            return y
        except Exception as error:  # noqa: BLE001 - any Triton failure means: cuBLAS from now on
            log.warning("skinny linear kernel unavailable (%s: %s); using cuBLAS", type(error).__name__, error)
            _failed = True
    y = F.linear(x, weight, bias)
    y = F.gelu(y) if gelu else y
    return y if residual is None else y + residual
