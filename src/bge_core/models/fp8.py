"""E4M3 linear layers for the fused encoder (``dtype="fp8"``, GPUs with FP8 tensor cores).

Weights are scaled per output channel once at load and activations per token at run time: the
rowwise scaling that `torch._scaled_mm` runs as one kernel on Hopper, and the finest of the scalings
it offers (E4M3 keeps 3 mantissa bits whatever the scale, so per-tensor scales would only add
underflow). Each activation is quantized where it is produced, inside the compiled function that
ends with it (LayerNorm outputs, attention output), except the feed-forward's GELU output: its rows
are 4 × hidden wide, which Inductor reduces in a looped two-pass kernel (a quarter of an fp8 passages
run on an H200, BENCHMARKS.md); `gelu_quantize_rows` holds each row in registers and writes it once.
Attention, LayerNorms, biases and GELU run in bf16 / fp32 as in the bf16 path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bge_core.models.compiled import Compiled

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite E4M3 value
#: Hopper's fast FP8 accumulation: +9% on a passages run (H200), and no change to the measured cosines
#: against bf16 at 4 decimals (docs/fp8.md); the K of these GEMMs (≤ 4 × hidden) is short.
FAST_ACCUMULATION = True


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 values of `x` [T, K] and float32 scales [T, 1], each row scaled so its largest |value| is 448.

    Example:
        >>> values, scales = quantize_rows(torch.randn(4, 32))
        >>> values.dtype, scales.shape
        (torch.float8_e4m3fn, torch.Size([4, 1]))
    """
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).to(FP8), scale


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear layer's weight [N, K] as E4M3 values and float32 per-output-channel scales [1, N].

    Example:
        >>> values, scales = quantize_weight(torch.randn(64, 32))
        >>> scales.shape
        torch.Size([1, 64])
    """
    values, scale = quantize_rows(weight.detach())
    return values, scale.reshape(1, -1)


def fp8_linear(x8: torch.Tensor, x_scale: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T + bias`` in bf16 from quantized operands (`quantize_rows`, `quantize_weight`).

    Example:
        >>> y = fp8_linear(*quantize_rows(x), *quantize_weight(w), b)  # doctest: +SKIP
    """
    global _BIAS_IN_GEMM
    # A row-major weight [N, K] is the column-major [K, N] operand the FP8 GEMM wants.
    if bias is not None and _BIAS_IN_GEMM:
        try:  # the bias in the GEMM's epilogue saves a pass over the output
            return torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale, bias=bias,
                                    out_dtype=torch.bfloat16, use_fast_accum=FAST_ACCUMULATION)
        except RuntimeError as error:  # a build whose FP8 GEMM takes no bias with these scales
            log.info("FP8 GEMM with bias unavailable (%s); adding it separately", error)
            _BIAS_IN_GEMM = False
    out = torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=torch.bfloat16,
                           use_fast_accum=FAST_ACCUMULATION)
    return out if bias is None else out + bias


_BIAS_IN_GEMM = True


def gelu_quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rows(gelu(x))` (exact GELU) for x [T, N] in bf16: one pass over `x` on CUDA.

    Example:
        >>> values, scales = gelu_quantize_rows(torch.randn(4, 64, dtype=torch.bfloat16))
        >>> values.shape, scales.shape
        (torch.Size([4, 64]), torch.Size([4, 1]))
    """
    global _KERNEL_FAILED
    if x.is_cuda and not _KERNEL_FAILED:
        try:
            from bge_core.models.fp8_kernels import gelu_quantize_rows_triton

            return gelu_quantize_rows_triton(x, FP8_MAX)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - no Triton, or it cannot build the kernel: the same math in torch
            _KERNEL_FAILED = True
            log.warning("the Triton GELU-quantize kernel is unavailable (%s: %s); using torch",
                        type(error).__name__, error)
    return quantize_rows(F.gelu(x.float()))


_KERNEL_FAILED = False


@dataclass(frozen=True)
class Fp8LayerWeights:
    """One encoder layer's weights for the fp8 forward: E4M3 GEMM weights with their scales, the rest as is."""

    qkv: torch.Tensor
    qkv_scale: torch.Tensor
    qkv_bias: torch.Tensor
    out: torch.Tensor
    out_scale: torch.Tensor
    out_bias: torch.Tensor
    attn_norm_weight: torch.Tensor
    attn_norm_bias: torch.Tensor
    up: torch.Tensor
    up_scale: torch.Tensor
    up_bias: torch.Tensor
    down: torch.Tensor
    down_scale: torch.Tensor
    down_bias: torch.Tensor
    ffn_norm_weight: torch.Tensor
    ffn_norm_bias: torch.Tensor

    @classmethod
    def of(cls, qkv: torch.Tensor, qkv_bias: torch.Tensor, out: torch.Tensor, out_bias: torch.Tensor,
           attn_norm_weight: torch.Tensor, attn_norm_bias: torch.Tensor, up: torch.Tensor, up_bias: torch.Tensor,
           down: torch.Tensor, down_bias: torch.Tensor, ffn_norm_weight: torch.Tensor,
           ffn_norm_bias: torch.Tensor) -> Fp8LayerWeights:
        """Quantize a layer given as the bf16 path's weight tuple (Q/K/V already concatenated)."""
        (qkv8, qkv_scale), (out8, out_scale) = quantize_weight(qkv), quantize_weight(out)
        (up8, up_scale), (down8, down_scale) = quantize_weight(up), quantize_weight(down)
        return cls(qkv8, qkv_scale, qkv_bias, out8, out_scale, out_bias, attn_norm_weight, attn_norm_bias, up8,
                   up_scale, up_bias, down8, down_scale, down_bias, ffn_norm_weight, ffn_norm_bias)


def _attention_output(attn: torch.Tensor, x: torch.Tensor, w_out: torch.Tensor, s_out: torch.Tensor,
                      b_out: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output projection + residual → LayerNorm, returned also quantized for the up-projection."""
    h = F.layer_norm(fp8_linear(*quantize_rows(attn), w_out, s_out) + b_out + x, (x.shape[-1],), g, b, eps)
    return (h, *quantize_rows(h))


def _ffn_output(up8: torch.Tensor, up_scale: torch.Tensor, w_down: torch.Tensor, s_down: torch.Tensor,
                b_down: torch.Tensor, h: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Down-projection + residual → LayerNorm, returned also quantized for the next layer's QKV GEMM."""
    y = F.layer_norm(fp8_linear(up8, up_scale, w_down, s_down) + b_down + h, (h.shape[-1],), g, b, eps)
    return (y, *quantize_rows(y))


# Compiled once for every layer and model (weights are arguments): the bias adds, LayerNorms and
# quantizations around each GEMM fuse into one kernel.
ATTENTION_OUTPUT = Compiled(_attention_output)
FFN_OUTPUT = Compiled(_ffn_output)
QUANTIZE_ROWS = Compiled(quantize_rows)


def layer_after_attention(attn: torch.Tensor, x: torch.Tensor, w: Fp8LayerWeights,
                          eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT's layer after attention in fp8: the layer output, and it quantized for the next layer.

    Example:
        >>> x, x8, x_scale = layer_after_attention(attn, x, weights, 1e-12)  # doctest: +SKIP
    """
    h, h8, h_scale = ATTENTION_OUTPUT(attn, x, w.out, w.out_scale, w.out_bias, w.attn_norm_weight,
                                      w.attn_norm_bias, eps)
    up8, up_scale = gelu_quantize_rows(fp8_linear(h8, h_scale, w.up, w.up_scale, w.up_bias))
    return FFN_OUTPUT(up8, up_scale, w.down, w.down_scale, w.down_bias, h, w.ffn_norm_weight, w.ffn_norm_bias, eps)
