"""Tiny random Visualized-BGE checkpoints in the exact key layout of the released ``.pth`` files.

``Visualized_base_en_v1.5.pth`` = EVA02-CLIP-B-16 tower (patch 16) + bge-base-en-v1.5 (BERT);
``Visualized_m3.pth`` = EVA02-CLIP-L-14 tower (patch 14) + bge-m3 (XLM-R). Here the towers are 32 wide with
2 blocks and the text models are the tiny ones of tests/fixtures; everything else (key names, their order,
the shared rope table saved again under every block, no ``position_ids`` buffer, the unused pooler,
``logit_scale``, ``norm`` and ``head``) is as in the released files.
"""

from __future__ import annotations

import math
import os

import torch
from transformers import AutoModel

WIDTH = 32
HEAD_DIM = 16
BLOCKS = 2
MLP = int(WIDTH * 2.6667)  # 85, as int(width * mlp_ratio) in EVA-CLIP
EMBED = 16
IMAGE = 224


def oracle_rope(head_dim: int, grid: int, pt_seq_len: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionRotaryEmbeddingFast's tables, written out: theta_k = 10000^(-2k/dim) over dim = head_dim/2,
    positions t = i/grid*pt_seq_len, each angle used by a channel pair; (row angles, column angles) per token."""
    dim = head_dim // 2
    rows = []
    for i in range(grid):
        for j in range(grid):
            angles = []
            for pos in (i, j):
                t = pos / grid * pt_seq_len
                for k in range(dim // 2):
                    theta = t * 10000 ** (-(2 * k) / dim)
                    angles += [theta, theta]
            rows.append(angles)
    table = torch.tensor(rows, dtype=torch.float64)
    return table.cos().float(), table.sin().float()


def _visual_weights(patch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    grid = IMAGE // patch

    def rand(*shape: int, std: float = 0.2, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std + mean

    cos, sin = oracle_rope(HEAD_DIM, grid)
    w: dict[str, torch.Tensor] = {
        "cls_token": rand(1, 1, WIDTH, std=1.0),
        "pos_embed": rand(1, grid * grid + 1, WIDTH, std=0.5),
        "patch_embed.proj.weight": rand(WIDTH, 3, patch, patch, std=0.1),
        "patch_embed.proj.bias": rand(WIDTH, std=0.1),
        "rope.freqs_cos": cos.clone(),
        "rope.freqs_sin": sin.clone(),
    }
    for b in range(BLOCKS):
        p = f"blocks.{b}."
        w.update({
            p + "norm1.weight": rand(WIDTH, mean=1.0), p + "norm1.bias": rand(WIDTH),
            p + "attn.q_bias": rand(WIDTH), p + "attn.v_bias": rand(WIDTH),
            p + "attn.q_proj.weight": rand(WIDTH, WIDTH), p + "attn.k_proj.weight": rand(WIDTH, WIDTH),
            p + "attn.v_proj.weight": rand(WIDTH, WIDTH),
            p + "attn.inner_attn_ln.weight": rand(WIDTH, mean=1.0), p + "attn.inner_attn_ln.bias": rand(WIDTH),
            p + "attn.proj.weight": rand(WIDTH, WIDTH), p + "attn.proj.bias": rand(WIDTH),
            p + "attn.rope.freqs_cos": cos.clone(), p + "attn.rope.freqs_sin": sin.clone(),
            p + "norm2.weight": rand(WIDTH, mean=1.0), p + "norm2.bias": rand(WIDTH),
            p + "mlp.w1.weight": rand(MLP, WIDTH), p + "mlp.w1.bias": rand(MLP),
            p + "mlp.w2.weight": rand(MLP, WIDTH), p + "mlp.w2.bias": rand(MLP),
            p + "mlp.ffn_ln.weight": rand(MLP, mean=1.0), p + "mlp.ffn_ln.bias": rand(MLP),
            p + "mlp.w3.weight": rand(WIDTH, MLP), p + "mlp.w3.bias": rand(WIDTH),
        })
    w.update({"norm.weight": rand(WIDTH, mean=1.0), "norm.bias": rand(WIDTH),
              "head.weight": rand(EMBED, WIDTH), "head.bias": rand(EMBED)})
    return w


def build_visualized(pth_path: str, text_dir: str, patch: int, seed: int = 0) -> str:
    """Write a ``.pth`` whose text weights are those of the tiny BGE checkpoint `text_dir` and whose
    vision tower is random (`patch` 16: base layout, 14: m3 layout)."""
    gen = torch.Generator().manual_seed(seed)
    text = AutoModel.from_pretrained(text_dir)
    hidden = text.config.hidden_size
    state: dict[str, torch.Tensor] = {}
    state.update({f"bge_encoder.{k}": v.clone() for k, v in text.encoder.state_dict().items()})
    embeddings = text.embeddings.state_dict()
    for k in ("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
              "LayerNorm.weight", "LayerNorm.bias"):
        state[f"bge_embeddings.{k}"] = embeddings[k].clone()
    pooler = getattr(text, "pooler", None)
    if pooler is not None:
        state.update({f"bge_pooler.{k}": v.clone() for k, v in pooler.state_dict().items()})
    else:  # the research model always has one (random, unused)
        state["bge_pooler.dense.weight"] = torch.randn(hidden, hidden, generator=gen)
        state["bge_pooler.dense.bias"] = torch.randn(hidden, generator=gen)
    state["model_visual.logit_scale"] = torch.tensor(math.log(1 / 0.07))
    state.update({f"model_visual.visual.{k}": v for k, v in _visual_weights(patch, gen).items()})
    state["visual_proj.weight"] = torch.randn(hidden, WIDTH, generator=gen) * 0.3
    state["visual_proj.bias"] = torch.randn(hidden, generator=gen) * 0.3
    os.makedirs(os.path.dirname(pth_path), exist_ok=True)
    torch.save(state, pth_path)
    return pth_path
