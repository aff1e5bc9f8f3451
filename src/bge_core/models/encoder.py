"""A fused forward of BERT / XLM-R encoders on packed tokens (CUDA).

transformers runs each encoder layer as separate kernels: three Q/K/V GEMMs, then the bias add,
residual add and LayerNorm each reading and writing every activation. On packed passages that
memory traffic is ~8% of an H200's time (bench/probe_gpu.py). Here one GEMM computes Q, K and V,
PyTorch's varlen flash kernel does attention, the feed-forward's GELU runs inside its up-projection
GEMM, and the rest of the layer (output projection, residual, LayerNorm, feed-forward, residual,
LayerNorm) is one `torch.compile`d function with a dynamic token count, so residual adds fuse into
the LayerNorms. The weights are the model's own (Q/K/V concatenated once); the math is the same up
to bf16/fp16 rounding. Before a warm-up (models/compiled.py), or where compilation is not available
(no Triton, no compiler), the same function runs eagerly.

With ``fp8=True`` (``dtype="fp8"``) the four linear layers of every encoder layer run as E4M3 GEMMs
(models/fp8.py); attention, LayerNorms, biases, GELU and the heads stay in bf16.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from bge_core.engine.attention import packed_attention
from bge_core.models import fp8 as fp8_math
from bge_core.models.bert import fits_packed_backbone, runs_fused
from bge_core.models.compiled import Compiled

if TYPE_CHECKING:
    from bge_core.families.base import PackedBatch


def _post_attention(attn: torch.Tensor, x: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor,
                    g_attn: torch.Tensor, b_attn: torch.Tensor, w_up: torch.Tensor, b_up: torch.Tensor,
                    w_down: torch.Tensor, b_down: torch.Tensor, g_ffn: torch.Tensor, b_ffn: torch.Tensor,
                    eps: float, gelu_in_gemm: bool) -> torch.Tensor:
    """BERT's layer after attention: out-proj + residual → LayerNorm → GELU FFN + residual → LayerNorm.

    With `gelu_in_gemm`, the up-projection's bias and GELU are applied in the GEMM's epilogue
    (cuBLASLt) instead of a separate pass that reads and writes the [T, 4096] activations: ~10%
    of a passages batch on an H100 (bench/probe_gpu.py `epilogue`). The epilogue computes GELU in
    its tanh form, which differs from the exact form by at most 4.7e-4 (at x ≈ 2.7, where a bf16
    step is 0.0156 and an fp16 step 0.002): below the rounding of the half-precision activations.
    """
    d = x.shape[-1]
    h = F.layer_norm(F.linear(attn, w_out, b_out) + x, (d,), g_attn, b_attn, eps)
    if gelu_in_gemm:
        up = torch._addmm_activation(b_up, h, w_up.t(), use_gelu=True)
    else:
        up = F.gelu(F.linear(h, w_up, b_up))
    y = F.linear(up, w_down, b_down)
    return F.layer_norm(y + h, (d,), g_ffn, b_ffn, eps)


# One compiled function serves every layer and every model: weights are arguments, not constants.
POST_ATTENTION = Compiled(_post_attention)



class FusedEncoder:
    """Packed-token forward of a BERT / XLM-R backbone; build with `fused_encoder`.

    Example:
        >>> encoder = fused_encoder(model)  # doctest: +SKIP
        >>> encoder(packed_batch).shape      # doctest: +SKIP
        torch.Size([T, 1024])
    """

    def __init__(self, model: torch.nn.Module, fp8: bool = False) -> None:
        config = model.config
        self.fp8 = fp8
        self.embeddings = model.embeddings
        self.heads = int(config.num_attention_heads)
        self.eps = float(config.layer_norm_eps)
        self.post = POST_ATTENTION
        weight = model.encoder.layer[0].intermediate.dense.weight
        # Half precision on CUDA only: in float32 the tanh form's difference would exceed rounding.
        self.gelu_in_gemm = runs_fused(True, weight.device, weight.dtype) and hasattr(torch, "_addmm_activation")
        self.layers = []
        for layer in model.encoder.layer:
            attn, out = layer.attention.self, layer.attention.output
            qkv_weight = torch.cat([attn.query.weight, attn.key.weight, attn.value.weight]).detach()
            qkv_bias = torch.cat([attn.query.bias, attn.key.bias, attn.value.bias]).detach()
            weights = (qkv_weight, qkv_bias, out.dense.weight, out.dense.bias, out.LayerNorm.weight,
                       out.LayerNorm.bias, layer.intermediate.dense.weight, layer.intermediate.dense.bias,
                       layer.output.dense.weight, layer.output.dense.bias, layer.output.LayerNorm.weight,
                       layer.output.LayerNorm.bias)
            self.layers.append(fp8_math.Fp8LayerWeights.of(*weights) if fp8 else weights)

    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        x = self.embeddings(input_ids=batch.input_ids, position_ids=batch.position_ids)[0]
        tokens, width = x.shape
        cu, longest = batch.cu_seqlens, batch.max_length
        if self.fp8:
            return self._forward_fp8(x, cu, longest)
        for qkv_weight, qkv_bias, *rest in self.layers:
            q, k, v = F.linear(x, qkv_weight, qkv_bias).view(tokens, 3, self.heads, width // self.heads).unbind(1)
            attn = packed_attention(q, k, v, cu, longest, False, None)
            x = self.post(attn.reshape(tokens, width), x, *rest, self.eps, self.gelu_in_gemm)
        return x

    def _forward_fp8(self, x: torch.Tensor, cu: torch.Tensor, longest: int) -> torch.Tensor:
        tokens, width = x.shape
        x8, x_scale = fp8_math.QUANTIZE_ROWS(x)
        for w in self.layers:
            qkv = fp8_math.fp8_linear(x8, x_scale, w.qkv, w.qkv_scale, w.qkv_bias)
            q, k, v = qkv.view(tokens, 3, self.heads, width // self.heads).unbind(1)
            attn = packed_attention(q, k, v, cu, longest, False, None)
            x, x8, x_scale = fp8_math.layer_after_attention(attn.reshape(tokens, width), x, w, self.eps)
        return x


def fused_encoder(model: torch.nn.Module, fp8: bool = False) -> FusedEncoder | None:
    """A `FusedEncoder` for a plain BERT / XLM-R / RoBERTa backbone on CUDA in half precision, else
    None (other architectures, relative position embeddings, non-GELU activations, CPU). `fp8` runs its
    linear layers in E4M3 (the model must be in bf16 on a GPU with FP8 tensor cores)."""
    config = model.config
    weight = next(model.parameters())
    plain = (
        fits_packed_backbone(config)
        and runs_fused(True, weight.device, weight.dtype)
        and hasattr(model, "embeddings")
        and hasattr(model, "encoder")
    )
    return FusedEncoder(model, fp8=fp8) if plain else None
