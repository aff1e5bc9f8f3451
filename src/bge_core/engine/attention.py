"""Padding-free attention: the transformers backbone runs on packed tokens of many sequences.

A packed batch is one row of ``T`` tokens (all sequences back to back) with ``cu_seqlens`` marking
where each sequence starts. transformers' attention interface lets a model call a registered
function instead of SDPA; ours hands the packed q/k/v to PyTorch's variable-length flash kernel, so
no FLOP or byte is spent on padding. Everything else in the model (embeddings, GEMMs, norms) is
per-token and needs no change; only position ids must restart at each sequence.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from bge_core.engine.tiled_attention import kernel_failed, tiled_attention, tiled_attention_fits
from bge_core.models.compiled import compiling_allowed

IMPLEMENTATION = "bge_varlen"


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int, causal: bool,
                  scale: float | None) -> torch.Tensor:
    """[T, H, D] packed attention with PyTorch's own varlen flash kernel (no flash-attn package), or,
    once kernels may be compiled, our tiled kernel (engine/tiled_attention.py; on an H200, 2.5× less
    attention time for a 16-token query, 2× for passages, 1.4× for long documents).

    Off CUDA (tests of the packed path on CPU) each sequence runs through SDPA in turn.
    """
    if q.is_cuda and compiling_allowed() and tiled_attention_fits(q, k, max_len, causal):
        try:
            return tiled_attention(q, k, v, cu, max_len, scale)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - Triton cannot build or run it here: flash does the same
            kernel_failed(error)
    if q.is_cuda:
        out = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_len, max_len, 0.0, causal, False,
                                                      scale=scale)
        return out[0]
    bounds = cu.tolist()
    parts = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (x[start:end].transpose(0, 1) for x in (q, k, v))
        if ks.shape[0] != qs.shape[0]:  # grouped-query attention
            ks = ks.repeat_interleave(qs.shape[0] // ks.shape[0], dim=0)
            vs = vs.repeat_interleave(qs.shape[0] // vs.shape[0], dim=0)
        parts.append(torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale))
    return torch.cat([p.transpose(0, 1) for p in parts])


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function for packed batches ([1, H, T, D] in, [1, T, H, D] out)."""
    cu, max_len = kwargs["cu_seq_lens_q"], kwargs["max_length_q"]
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))
    out = packed_attention(q, k, v, cu, max_len, bool(getattr(module, "is_causal", False)), scaling)
    return out.unsqueeze(0), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    # Sequence boundaries live in cu_seqlens; no mask tensor is built.
    return None


@functools.cache
def _register() -> None:
    """Make the packed attention function known to transformers (once; importing transformers' attention
    and masking modules is part of its model stack, which the fused encoder never needs)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(IMPLEMENTATION, varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, _no_mask)


def can_pack(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Packing needs CUDA, half precision (flash kernels) and plain softmax attention."""
    config = model.config
    return (
        device.type == "cuda"
        and dtype in (torch.float16, torch.bfloat16)
        and getattr(config, "attn_logit_softcapping", None) is None
        and getattr(config, "sliding_window", None) is None
        and hasattr(torch.ops.aten, "_flash_attention_forward")
    )


def use_packed_attention(model: torch.nn.Module) -> None:
    """Switch a loaded transformers model to the packed attention function."""
    _register()
    model.config._attn_implementation = IMPLEMENTATION
    for sub in model.modules():
        config = getattr(sub, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = IMPLEMENTATION
