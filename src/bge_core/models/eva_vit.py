"""The EVA02-CLIP vision tower of Visualized-BGE, in plain torch, with the research checkpoint's parameter names.

timm's `Eva` is the same network, but timm hard-imports torchvision, which cannot be imported next to a
CPU build of torch; this module needs neither. Its state dict keys are exactly those under
``model_visual.visual.`` in ``Visualized_base_en_v1.5.pth`` / ``Visualized_m3.pth`` (rope tables included),
so the released weights load with ``strict=True``.

The tower returns the token states of the last block **before** the final ``norm`` (that is what
Visualized-BGE feeds into BGE); ``norm`` and ``head`` are kept only so the checkpoint loads strictly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

_LN_EPS = 1e-6  # EVA-CLIP builds every LayerNorm with eps 1e-6


@dataclass(frozen=True)
class EvaVisionConfig:
    """Shape of an EVA02 tower (B-16: width 768, 12 layers, patch 16; L-14: 1024, 24, patch 14)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    head_dim: int = 64
    mlp_hidden: int = 2048
    embed_dim: int = 512  # output of `head` (unused by Visualized-BGE)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def heads(self) -> int:
        return self.width // self.head_dim

    @classmethod
    def from_state_dict(cls, weights: dict[str, torch.Tensor], prefix: str = "") -> EvaVisionConfig:
        """The configuration a checkpoint's tensors imply (what the research code picks by model name).

        Example:
            >>> EvaVisionConfig.from_state_dict(torch.load("Visualized_m3.pth"), "model_visual.visual.").layers
            24
        """
        patch = weights[prefix + "patch_embed.proj.weight"]
        grid = round((weights[prefix + "pos_embed"].shape[1] - 1) ** 0.5)
        depth = 1 + max(int(k[len(prefix):].split(".")[1]) for k in weights if k.startswith(prefix + "blocks."))
        return cls(
            image_size=grid * patch.shape[-1], patch_size=patch.shape[-1], width=patch.shape[0], layers=depth,
            head_dim=weights[prefix + "rope.freqs_cos"].shape[1],
            mlp_hidden=weights[prefix + "blocks.0.mlp.w1.weight"].shape[0],
            embed_dim=weights[prefix + "head.weight"].shape[0],
        )


def rope_tables(head_dim: int, grid: int, pt_seq_len: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """EVA02's 2-D rotary tables (grid², head_dim): half the channels rotate with the row, half with the column;
    positions are scaled to the pre-training grid of `pt_seq_len`.

    Example:
        >>> cos, sin = rope_tables(64, 14)
        >>> cos.shape
        torch.Size([196, 64])
    """
    half = head_dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, 2, dtype=torch.float32) / half))
    t = torch.arange(grid, dtype=torch.float32) / grid * pt_seq_len
    angles = torch.repeat_interleave(torch.outer(t, inv_freq), 2, dim=-1)  # (grid, half), pairs share an angle
    both = torch.cat([angles[:, None, :].expand(grid, grid, half), angles[None, :, :].expand(grid, grid, half)], -1)
    both = both.reshape(grid * grid, head_dim)
    return both.cos(), both.sin()


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1) → (-x1, x0) on interleaved channel pairs."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class _Rope(nn.Module):
    def __init__(self, tokens: int, head_dim: int) -> None:
        super().__init__()
        self.register_buffer("freqs_cos", torch.zeros(tokens, head_dim))
        self.register_buffer("freqs_sin", torch.zeros(tokens, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.freqs_cos + _rotate_pairs(x) * self.freqs_sin


class _Attention(nn.Module):
    def __init__(self, cfg: EvaVisionConfig) -> None:
        super().__init__()
        width = cfg.width
        self.heads = cfg.heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        # q and v have biases, k has none (saved as separate tensors, as in the checkpoint)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.rope = _Rope(cfg.grid ** 2, cfg.head_dim)
        self.inner_attn_ln = nn.LayerNorm(width, eps=_LN_EPS)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = F.linear(x, self.q_proj.weight, self.q_bias).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.heads, -1).transpose(1, 2)
        v = F.linear(x, self.v_proj.weight, self.v_bias).view(b, n, self.heads, -1).transpose(1, 2)
        # rotary positions on the patch tokens only; the CLS token is not rotated
        q = torch.cat([q[:, :, :1], self.rope(q[:, :, 1:])], dim=2)
        k = torch.cat([k[:, :, :1], self.rope(k[:, :, 1:])], dim=2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(self.inner_attn_ln(out))


class _SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(width, hidden)
        self.w2 = nn.Linear(width, hidden)
        self.ffn_ln = nn.LayerNorm(hidden, eps=_LN_EPS)
        self.w3 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class _Block(nn.Module):
    def __init__(self, cfg: EvaVisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=_LN_EPS)
        self.attn = _Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=_LN_EPS)
        self.mlp = _SwiGLU(cfg.width, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: EvaVisionConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)


class EvaVisionTower(nn.Module):
    """EVA02-CLIP vision transformer (pre-norm blocks, SwiGLU MLP with sub-LN, 2-D RoPE on patch tokens).

    `forward` maps normalised pixels (B, 3, S, S) to token states (B, 1 + grid², width) of the last block,
    before the final norm, as Visualized-BGE reads them.

    Example:
        >>> tower = EvaVisionTower(EvaVisionConfig(width=32, layers=1, head_dim=16, mlp_hidden=64, embed_dim=8))
        >>> tower(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 197, 32])
    """

    def __init__(self, cfg: EvaVisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid ** 2 + 1, cfg.width))
        self.patch_embed = _PatchEmbed(cfg)
        # The research model saves its one shared rope table here and again under every block.
        self.rope = _Rope(cfg.grid ** 2, cfg.head_dim)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width, eps=_LN_EPS)
        self.head = nn.Linear(cfg.width, cfg.embed_dim)
        cos, sin = rope_tables(cfg.head_dim, cfg.grid)
        for rope in [self.rope, *(b.attn.rope for b in self.blocks)]:
            rope.freqs_cos.copy_(cos)
            rope.freqs_sin.copy_(sin)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x
