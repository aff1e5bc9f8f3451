"""An independent Visualized-BGE: the research code's equations written out, on library parts.

Preprocessing with Pillow + numpy, the EVA02 tower as explicit tensor math on the raw state dict (manual
softmax attention, rotate-half on interleaved pairs), the BGE encoder from transformers, and the
composition rule of ``Visualized_BGE.encode_mm`` (text embedded by HF's embedding module with position_ids
``[0] + arange(N+1, N+T)``, image tokens ``LayerNorm(visual_proj(tokens) + position rows 1..N)``).
The vision tower is pluggable: `OracleVisualizedBGE(..., tower=...)` takes any function from a PIL image to
the tower's token states (1 + N, W) before its final norm (test_timm_oracle.py plugs in timm's EVA02 with
torchvision's preprocessing); by default it is the hand-written `eva_tokens` on `pixels`.
Nothing here imports bge_core.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoTokenizer

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def pixels(picture: Image.Image, size: int = 224) -> torch.Tensor:
    """torchvision Resize(size, BICUBIC) + CenterCrop(size) + RGB + ToTensor + Normalize, on a PIL image."""
    w, h = picture.size
    short, long = (w, h) if w <= h else (h, w)
    if short != size:
        new_long = int(size * long / short)
        picture = picture.resize((size, new_long) if w <= h else (new_long, size), Image.BICUBIC)
    w, h = picture.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    picture = picture.crop((left, top, left + size, top + size)).convert("RGB")
    array = (np.asarray(picture, dtype=np.float64) / 255.0 - MEAN) / STD
    return torch.tensor(array.transpose(2, 0, 1), dtype=torch.float32)


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-6) * w + b


def _rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = t[..., 0::2], t[..., 1::2]
    rotated = torch.stack((-x2, x1), dim=-1).reshape(t.shape)
    return t * cos + rotated * sin


def eva_tokens(sd: dict[str, torch.Tensor], image: torch.Tensor, head_dim: int) -> torch.Tensor:
    """EVAVisionTransformer.forward(return_all_features=True): (1 + N, W) for one image (3, S, S)."""
    p = "model_visual.visual."
    conv = sd[p + "patch_embed.proj.weight"]
    patch = conv.shape[-1]
    grid = image.shape[-1] // patch
    # patch embedding as explicit patch x weight products
    patches = image.reshape(3, grid, patch, grid, patch).permute(1, 3, 0, 2, 4).reshape(grid * grid, -1)
    x = patches @ conv.reshape(conv.shape[0], -1).T + sd[p + "patch_embed.proj.bias"]
    x = torch.cat([sd[p + "cls_token"][0], x]) + sd[p + "pos_embed"][0]
    width = x.shape[-1]
    heads = width // head_dim
    b = 0
    while f"{p}blocks.{b}.norm1.weight" in sd:
        q_ = f"{p}blocks.{b}."
        h = _ln(x, sd[q_ + "norm1.weight"], sd[q_ + "norm1.bias"])
        q = h @ sd[q_ + "attn.q_proj.weight"].T + sd[q_ + "attn.q_bias"]
        k = h @ sd[q_ + "attn.k_proj.weight"].T
        v = h @ sd[q_ + "attn.v_proj.weight"].T + sd[q_ + "attn.v_bias"]
        q, k, v = (t.reshape(-1, heads, head_dim).transpose(0, 1) for t in (q, k, v))
        cos, sin = sd[q_ + "attn.rope.freqs_cos"], sd[q_ + "attn.rope.freqs_sin"]
        q = torch.cat([q[:, :1], _rope(q[:, 1:], cos, sin)], dim=1)
        k = torch.cat([k[:, :1], _rope(k[:, 1:], cos, sin)], dim=1)
        attn = torch.softmax((q * head_dim ** -0.5) @ k.transpose(-1, -2), dim=-1)
        out = (attn @ v).transpose(0, 1).reshape(-1, width)
        out = _ln(out, sd[q_ + "attn.inner_attn_ln.weight"], sd[q_ + "attn.inner_attn_ln.bias"])
        x = x + out @ sd[q_ + "attn.proj.weight"].T + sd[q_ + "attn.proj.bias"]
        h = _ln(x, sd[q_ + "norm2.weight"], sd[q_ + "norm2.bias"])
        g = h @ sd[q_ + "mlp.w1.weight"].T + sd[q_ + "mlp.w1.bias"]
        u = h @ sd[q_ + "mlp.w2.weight"].T + sd[q_ + "mlp.w2.bias"]
        m = _ln(g * torch.sigmoid(g) * u, sd[q_ + "mlp.ffn_ln.weight"], sd[q_ + "mlp.ffn_ln.bias"])
        x = x + m @ sd[q_ + "mlp.w3.weight"].T + sd[q_ + "mlp.w3.bias"]
        b += 1
    return x


#: A vision tower for the oracle: PIL image -> token states (1 + N, W) of the last block, before the final norm.
Tower = Callable[[Image.Image], torch.Tensor]


class OracleVisualizedBGE:
    """encode_text / encode_image / encode_mm of the research model, one input at a time, fp32.

    `tower` replaces the hand-written EVA02 tower (and its preprocessing); the composition and the BGE encoder
    stay the same.
    """

    def __init__(self, pth: str, text_dir: str, tower: Tower | None = None) -> None:
        self.sd = torch.load(pth, map_location="cpu", weights_only=True)
        config = AutoConfig.from_pretrained(text_dir)
        config._attn_implementation = "eager"
        self.tokenizer = AutoTokenizer.from_pretrained(text_dir)
        self.bert = AutoModel.from_config(config).eval()
        self.bert.encoder.load_state_dict({k[12:]: v for k, v in self.sd.items() if k.startswith("bge_encoder.")})
        self.bert.embeddings.load_state_dict(
            {k[15:]: v for k, v in self.sd.items() if k.startswith("bge_embeddings.")}, strict=False)
        self.head_dim = self.sd["model_visual.visual.rope.freqs_cos"].shape[1]
        self.tower: Tower = tower if tower is not None else self.hand_written_tower

    def hand_written_tower(self, picture: Image.Image) -> torch.Tensor:
        """`pixels` + `eva_tokens`: (1 + N, W)."""
        return eva_tokens(self.sd, pixels(picture), self.head_dim)

    @torch.no_grad()
    def text(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, return_tensors="pt")
        out = self.bert(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                        token_type_ids=torch.zeros_like(ids["input_ids"])).last_hidden_state[0, 0]
        return torch.nn.functional.normalize(out, dim=-1)

    @torch.no_grad()
    def multimodal(self, picture: Image.Image, text: str) -> torch.Tensor:
        tokens = self.tower(picture)[1:]
        n = tokens.shape[0]
        emb = self.bert.embeddings
        img = tokens @ self.sd["visual_proj.weight"].T + self.sd["visual_proj.bias"]
        img = img[None] + emb.position_embeddings(torch.arange(1, n + 1))[None]
        img = emb.LayerNorm(img)
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
        t_len = ids.shape[1]
        position_ids = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(n + 1, n + t_len)])[None]
        t = emb(input_ids=ids, position_ids=position_ids, token_type_ids=torch.zeros_like(ids))
        sequence = torch.cat([t[:, :1], img, t[:, 1:]], dim=1)
        mask = torch.zeros(1, 1, 1, sequence.shape[1])  # one input: every token is real
        out = self.bert.encoder(sequence, attention_mask=mask).last_hidden_state[0, 0]
        return torch.nn.functional.normalize(out, dim=-1)

    def image(self, picture: Image.Image) -> torch.Tensor:
        return self.multimodal(picture, "")
