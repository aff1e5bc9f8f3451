"""Rotary position embedding tables (the default, non-interleaved "rotate half" form)."""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import rotate_half


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin tables [1, 1, L, head_dim] in float32 for `positions` [1, L] (may be scaled floats).

    The same fp32 products as transformers' and FlagEmbedding's tables:
    position × 1 / theta ** (arange(0, d, 2) / d).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [B, heads, L, head_dim] by tables from `rope_cos_sin` (computed in x's dtype)."""
    return x * cos + rotate_half(x) * sin
