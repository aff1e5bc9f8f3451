"""Gemma2 with per-layer score heads and passage-token compression
(bge-reranker-v2.5-gemma2-lightweight), inference only.

The project's copy of FlagEmbedding's `CostWiseGemmaForCausalLM` (`models/gemma_model.py`): same
parameter names, cutoff layers, compression and head indexing, no trust_remote_code. Attention
follows what FlagEmbedding ran on the transformers 4.4x it supports: the SDPA Gemma2 attention,
which does not soft-cap attention logits, unless config.json asks for eager attention; sliding
windows on even layers as in transformers 4.46.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm

from bge_core.errors import ModelLoadError
from bge_core.models.checkpoint import load_model, read_config
from bge_core.models.minicpm_layerwise import as_layer_list
from bge_core.models.rope import apply_rope, rope_cos_sin

log = logging.getLogger(__name__)


@dataclass  # not frozen: the engine may tag `config._attn_implementation`
class CostWiseGemmaConfig:
    """The config.json fields the model reads; defaults are Gemma2Config's / CostWiseGemmaConfig's."""

    vocab_size: int = 256000
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False
    query_pre_attn_scalar: float = 256
    sliding_window: int | None = 4096
    final_logit_softcapping: float | None = 30.0
    attn_logit_softcapping: float | None = None  # applied only with eager attention (see module doc)
    start_layer: int = 28
    layer_sep: int = 28
    layer_wise: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CostWiseGemmaConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        # Gemma2MLP reads hidden_activation only (not hidden_act)
        values["hidden_activation"] = raw.get("hidden_activation") or "gelu_pytorch_tanh"
        if "rope_theta" not in raw and isinstance(raw.get("rope_parameters"), dict):  # transformers 5 layout
            values["rope_theta"] = raw["rope_parameters"].get("rope_theta", 10000.0)
        eager = "eager" in (raw.get("attn_implementation"), raw.get("_attn_implementation"))
        values["attn_logit_softcapping"] = raw.get("attn_logit_softcapping", 50.0) if eager else None
        return cls(**values)


class Gemma2Attention(nn.Module):
    def __init__(self, config: CostWiseGemmaConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.query_pre_attn_scalar**-0.5
        self.softcap = config.attn_logit_softcapping
        bias, hidden = config.attention_bias, config.hidden_size
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        q = apply_rope(self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k = apply_rope(self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        if self.softcap is None:
            causal = mask is None and n > 1
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale)
        else:  # eager Gemma2 attention: soft-capped logits
            logits = torch.tanh(q @ k.transpose(2, 3) * self.scale / self.softcap) * self.softcap
            if mask is None:
                mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
            out = torch.softmax(logits, dim=-1, dtype=torch.float32).to(q.dtype) @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class Gemma2MLP(nn.Module):
    def __init__(self, config: CostWiseGemmaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Gemma2DecoderLayer(nn.Module):
    def __init__(self, config: CostWiseGemmaConfig, index: int) -> None:
        super().__init__()
        self.sliding = index % 2 == 0 and config.sliding_window is not None  # transformers 4.46 rule
        self.self_attn = Gemma2Attention(config)
        self.mlp = Gemma2MLP(config)
        eps = config.rms_norm_eps
        self.input_layernorm = Gemma2RMSNorm(config.hidden_size, eps=eps)
        self.post_attention_layernorm = Gemma2RMSNorm(config.hidden_size, eps=eps)
        self.pre_feedforward_layernorm = Gemma2RMSNorm(config.hidden_size, eps=eps)
        self.post_feedforward_layernorm = Gemma2RMSNorm(config.hidden_size, eps=eps)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = h + self.post_attention_layernorm(self.self_attn(self.input_layernorm(h), cos, sin, mask))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class CostWiseGemmaBackbone(nn.Module):
    """`model.*` of the checkpoint: embeddings, decoder layers, final norm."""

    def __init__(self, config: CostWiseGemmaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Gemma2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = Gemma2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class CostWiseHead(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear_head = nn.Linear(hidden_size, 1, bias=False)


def attention_masks(lengths: torch.Tensor, width: int, window: int | None) -> tuple[torch.Tensor | None, ...]:
    """(full, sliding) boolean masks of right-padded rows, True = attend; None = plain causal."""
    pos = torch.arange(width, device=lengths.device)
    padded = not bool((lengths == width).all())
    causal = pos[None, :] <= pos[:, None]
    full = (causal[None] & (pos[None, None, :] < lengths[:, None, None]))[:, None] if padded else None
    if window is None or width <= window:
        return full, full
    near = causal & (pos[:, None] - pos[None, :] < window)  # 4.46: keys j <= i - window are masked
    return full, (near[None, None] if full is None else full & near)


def compress_passages(
    h: torch.Tensor, lengths: torch.Tensor, query_lengths: torch.Tensor, prompt_lengths: torch.Tensor, ratio: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """FlagEmbedding's `token_compress`: mean-pool the passage states in groups of `ratio`.

    Query (BOS + query + separator) and prompt (separator + prompt) states are kept; the last
    group averages the remainder. Returns the re-packed right-padded states and new lengths.
    """
    b, width, hidden = h.shape
    pos = torch.arange(width, device=h.device)[None]
    q, p = query_lengths[:, None], prompt_lengths[:, None]
    passage = lengths[:, None] - q - p
    kept = (passage + ratio - 1) // ratio
    new_lengths = (q + kept + p)[:, 0]
    rel = pos - q
    in_passage = (rel >= 0) & (rel < passage)
    group = rel.clamp(min=0) // ratio
    size = torch.minimum(passage - group * ratio, torch.full_like(group, ratio)).clamp(min=1)
    target = torch.where(pos < q, pos, torch.where(in_passage, q + group, pos - passage + kept))
    out_width = int(new_lengths.max())
    target = torch.where(pos < lengths[:, None], target, out_width)  # padding → a dropped slot
    weight = torch.where(in_passage, (1.0 / size.float()).to(h.dtype), torch.ones((), dtype=h.dtype, device=h.device))
    out = h.new_zeros(b, out_width + 1, hidden)
    out.scatter_add_(1, target[..., None].expand(-1, -1, hidden), h * weight[..., None])
    return out[:, :out_width], new_lengths


class CostWiseGemmaReranker(nn.Module):
    """FlagEmbedding's CostWiseGemmaForCausalLM with `layer_wise` heads, scores only."""

    def __init__(self, config: CostWiseGemmaConfig) -> None:
        super().__init__()
        if not config.layer_wise:
            raise ModelLoadError("CostWiseGemma checkpoints without layer_wise heads cannot score pairs")
        self.config = config
        self.model = CostWiseGemmaBackbone(config)
        self.usable_layers = list(range(config.start_layer, config.num_hidden_layers + 1, config.layer_sep))
        self.lm_head = nn.ModuleList(CostWiseHead(config.hidden_size) for _ in self.usable_layers)

    @classmethod
    def from_pretrained(cls, path: str, device: torch.device, dtype: torch.dtype) -> CostWiseGemmaReranker:
        config = CostWiseGemmaConfig.from_dict(read_config(path))
        return load_model(lambda: cls(config), path, device, dtype)

    def select_layers(self, cutoff_layers: list[int] | int | None) -> list[int]:
        """Usable requested layers in depth order (others dropped with a warning, as FlagEmbedding)."""
        requested = as_layer_list(cutoff_layers, self.config.num_hidden_layers)
        valid = [layer for layer in requested if layer in self.usable_layers]
        if len(valid) < len(requested):
            log.warning("cutoff layers %s are not among %s; dropped", sorted(set(requested) - set(valid)),
                        self.usable_layers)
        if not valid:
            raise ValueError(f"cutoff_layers must be among {self.usable_layers}, got {requested}")
        return sorted(set(valid))

    def score(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor,
        query_lengths: torch.Tensor,
        prompt_lengths: torch.Tensor,
        cutoff_layers: list[int] | int | None = None,
        compress_ratio: int = 1,
        compress_layers: list[int] | None = None,
    ) -> torch.Tensor:
        """Raw scores [B, k] (float32) of right-padded rows; the i-th scored layer uses head i,
        as FlagEmbedding indexes heads by position in its list of returned states."""
        layers = self.select_layers(cutoff_layers)
        compress = set(compress_layers or []) if compress_ratio and compress_ratio > 1 else set()
        h = self.model.embed_tokens(input_ids)
        h = h * torch.tensor(self.config.hidden_size**0.5, dtype=h.dtype)
        head_dim, theta, window = self.config.head_dim, self.config.rope_theta, self.config.sliding_window

        def tables(width: int, lengths: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
            cos, sin = rope_cos_sin(torch.arange(width, device=h.device)[None], head_dim, theta)
            return (cos.to(h.dtype), sin.to(h.dtype), *attention_masks(lengths, width, window))

        cos, sin, full, sliding = tables(h.shape[1], lengths)
        states: list[torch.Tensor] = []
        for idx, layer in enumerate(self.model.layers):
            if idx in layers:
                states.append(self.model.norm(h[torch.arange(h.shape[0]), lengths - 1]))
            if idx == layers[-1]:
                break
            if idx in compress and idx != 0:
                h, lengths = compress_passages(h, lengths, query_lengths, prompt_lengths, compress_ratio)
                cos, sin, full, sliding = tables(h.shape[1], lengths)
            h = layer(h, cos, sin, sliding if layer.sliding else full)
        else:  # ran every layer: the final state is the deepest cutoff
            states.append(self.model.norm(h[torch.arange(h.shape[0]), lengths - 1]))
        cap = self.config.final_logit_softcapping
        scores = []
        for i, state in enumerate(states):
            logit = self.lm_head[i].linear_head(state)[:, 0]
            if cap is not None:
                logit = torch.tanh(logit / cap) * cap
            scores.append(logit.float())
        return torch.stack(scores, dim=1)
