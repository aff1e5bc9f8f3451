"""MiniCPM with one score head per layer (bge-reranker-v2-minicpm-layerwise), inference only.

Transformers does not ship this model (FlagEmbedding bundles it as `LayerWiseMiniCPMForCausalLM`),
so the project carries its own copy: same parameter names, same numerics in fp32 (sdpa path),
no trust_remote_code. The forward stops at the deepest requested cutoff layer and runs the heads
only on each row's last real token.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from bge_core.errors import ModelLoadError
from bge_core.models.checkpoint import load_model, read_config
from bge_core.models.rope import apply_rope, rope_cos_sin

log = logging.getLogger(__name__)


@dataclass  # not frozen: the engine may tag `config._attn_implementation`
class MiniCPMLayerwiseConfig:
    """The config.json fields the model reads; defaults are FlagEmbedding's config defaults."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False
    scale_emb: float = 1.0
    scale_depth: float = 1.0
    start_layer: int = 8
    head_multi: bool = True
    head_type: str = "simple"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MiniCPMLayerwiseConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known and v is not None})

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def rope_factor(self) -> float:
        """Linear RoPE scaling factor (1 when none); other scaling types are refused at load."""
        scaling = self.rope_scaling or {}
        kind = scaling.get("type", scaling.get("rope_type", "default"))
        if kind == "default":
            return 1.0
        if kind == "linear":
            return float(scaling["factor"])
        raise ModelLoadError(f"unsupported rope_scaling {scaling!r} (only linear scaling is implemented)")


class MiniCPMAttention(nn.Module):
    def __init__(self, config: MiniCPMLayerwiseConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads = config.num_attention_heads, config.kv_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        # MiniCPM rotates in fp32 whatever the model dtype, then casts back.
        q, k = apply_rope(q.float(), cos, sin).to(x.dtype), apply_rope(k.float(), cos, sin).to(x.dtype)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and n > 1)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class MiniCPMMLP(nn.Module):
    def __init__(self, config: MiniCPMLayerwiseConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class MiniCPMDecoderLayer(nn.Module):
    def __init__(self, config: MiniCPMLayerwiseConfig) -> None:
        super().__init__()
        self.self_attn = MiniCPMAttention(config)
        self.mlp = MiniCPMMLP(config)
        # LlamaRMSNorm computes exactly MiniCPM's rms_layernorm (fp32 statistics, weight last).
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.residual_scale = config.scale_depth / math.sqrt(config.num_hidden_layers)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask) * self.residual_scale
        return h + self.mlp(self.post_attention_layernorm(h)) * self.residual_scale


class MiniCPMBackbone(nn.Module):
    """`model.*` of the checkpoint: embeddings, decoder layers, final norm."""

    def __init__(self, config: MiniCPMLayerwiseConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MiniCPMDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class LayerwiseHead(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear_head = nn.Linear(hidden_size, 1, bias=False)


def as_layer_list(cutoff_layers: list[int] | int | None, default: int) -> list[int]:
    """FlagEmbedding's cutoff_layers argument as a list (None → the last layer)."""
    if cutoff_layers is None:
        return [default]
    return [cutoff_layers] if isinstance(cutoff_layers, int) else list(cutoff_layers)


def padding_mask(lengths: torch.Tensor, width: int) -> torch.Tensor | None:
    """Causal mask for right-padded rows ([B, 1, L, L], True = attend); None when nothing is padded."""
    if bool((lengths == width).all()):
        return None
    pos = torch.arange(width, device=lengths.device)
    causal = pos[None, :] <= pos[:, None]
    return (causal[None] & (pos[None, None, :] < lengths[:, None, None]))[:, None]


class LayerwiseMiniCPMReranker(nn.Module):
    """FlagEmbedding's LayerWiseMiniCPMForCausalLM with head_type "simple", scores only."""

    def __init__(self, config: MiniCPMLayerwiseConfig) -> None:
        super().__init__()
        if config.head_type != "simple":
            raise ModelLoadError(f"head_type {config.head_type!r} is not supported (only 'simple' scores a pair)")
        self.config = config
        self.model = MiniCPMBackbone(config)
        n_heads = config.num_hidden_layers + 1 - config.start_layer
        if config.head_multi:
            self.lm_head: nn.Module = nn.ModuleList(LayerwiseHead(config.hidden_size) for _ in range(n_heads))
        else:
            self.lm_head = LayerwiseHead(config.hidden_size)

    @classmethod
    def from_pretrained(cls, path: str, device: torch.device, dtype: torch.dtype) -> LayerwiseMiniCPMReranker:
        config = MiniCPMLayerwiseConfig.from_dict(read_config(path))
        _ = config.rope_factor  # refuse unsupported RoPE scaling before reading weights
        return load_model(lambda: cls(config), path, device, dtype)

    def select_layers(self, cutoff_layers: list[int] | int | None) -> tuple[list[int], list[int]]:
        """(layers whose states are scored, in depth order; head index used for each).

        As in FlagEmbedding, out-of-range layers are dropped with a warning, states are taken in
        depth order, and the i-th state is scored by the head of the i-th *requested* layer (so an
        unsorted request pairs states with other layers' heads, exactly like FlagEmbedding).
        """
        n, start = self.config.num_hidden_layers, self.config.start_layer
        requested = as_layer_list(cutoff_layers, n)
        valid = [layer for layer in requested if start <= layer <= n]
        if len(valid) < len(requested):
            log.warning("cutoff layers %s are outside [%d, %d]; dropped", sorted(set(requested) - set(valid)), start, n)
        if not valid:
            raise ValueError(f"cutoff_layers must lie in [{start}, {n}], got {requested}")
        layers = sorted(set(valid))
        return layers, [valid[i] - start for i in range(len(layers))]

    def score(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor,
        cutoff_layers: list[int] | int | None = None,
    ) -> torch.Tensor:
        """Raw scores [B, k] (float32) of right-padded rows, one column per scored layer."""
        layers, heads = self.select_layers(cutoff_layers)
        b, width = input_ids.shape
        rows, last = torch.arange(b, device=input_ids.device), lengths - 1
        positions = torch.arange(width, device=input_ids.device)[None] / self.config.rope_factor
        cos, sin = rope_cos_sin(positions, self.model.layers[0].self_attn.head_dim, self.config.rope_theta)
        h = self.model.embed_tokens(input_ids) * self.config.scale_emb
        cos, sin = cos.to(h.dtype), sin.to(h.dtype)  # as MiniCPM's sdpa path: the table in the model dtype
        mask = padding_mask(lengths, width)
        states: dict[int, torch.Tensor] = {}
        for idx, layer in enumerate(self.model.layers):
            if idx in layers:
                states[idx] = self.model.norm(h[rows, last])
            if idx == layers[-1]:
                break
            h = layer(h, cos, sin, mask)
        else:  # ran every layer: the final state is the deepest cutoff
            states[len(self.model.layers)] = self.model.norm(h[rows, last])
        scores = []
        for layer, head in zip(layers, heads):
            linear = self.lm_head[head] if isinstance(self.lm_head, nn.ModuleList) else self.lm_head
            scores.append(linear.linear_head(states[layer])[:, 0].float())
        return torch.stack(scores, dim=1)
