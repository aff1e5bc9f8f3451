"""Visualized-BGE: images, texts and image+text queries in one BGE vector space.

A Visualized-BGE checkpoint (``Visualized_base_en_v1.5.pth``, ``Visualized_m3.pth``) is one ``torch.save``d
state dict: the BGE text encoder (``bge_encoder.*``, ``bge_embeddings.*``, an unused ``bge_pooler.*``), an
EVA02-CLIP vision tower (``model_visual.visual.*``) and ``visual_proj``. The BGE model it was trained from
supplies only the config and the tokenizer; every weight comes from the ``.pth``.

How an input becomes a vector (the research code's rule):
- text only: plain BGE (token type 0, the encoder's own positions), CLS, L2 normalisation;
- image (+ text): the tower's patch tokens (its CLS dropped, before its final norm) go through
  ``visual_proj``, get BGE position rows 1..N added and BGE's embedding LayerNorm; they sit between the text's
  CLS and the rest of its tokens (an image alone is ``[CLS] image [SEP]``). Text tokens take position rows
  N+1, N+2, … (raw table rows, also for XLM-R), token type 0. CLS of the last layer, L2 normalised.

Images are read with Pillow and preprocessed as EVA-CLIP does for evaluation: bicubic resize of the short
side to 224, centre crop, then RGB, /255 and the OpenAI CLIP mean/std.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bge_core.errors import ModelLoadError
from bge_core.families.base import Batch, Family, Pending, TokenizedItem, split_rows
from bge_core.families.text import tokenize_texts
from bge_core.models.eva_vit import EvaVisionConfig, EvaVisionTower

#: CLIP's (OpenAI) normalisation, used by EVA-CLIP for these towers.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

_VISUAL = "model_visual.visual."
_PREFIXES = ("bge_encoder.", "bge_embeddings.", "bge_pooler.", "model_visual.", "visual_proj.")

#: Images decoded at a time by `Embedder.encode_images` (~150 KB of pixels each).
IMAGE_CHUNK = 256

ImageInput = Any  # a path (str / os.PathLike), raw file bytes, or a PIL image


@dataclass(frozen=True)
class ImageItem:
    """One image (+ text) input of the engine: preprocessed uint8 pixels (3, S, S) and its text."""

    pixels: torch.Tensor
    text: str


def read_image(image: ImageInput, index: int, what: str = "images") -> Any:
    """Open `image` (a path, file bytes, a binary file object such as BytesIO, or a PIL image), fully decoded.

    Raises:
        TypeError: not a path, bytes or PIL image (index named).
        ValueError: missing, unreadable, not an image, or zero-size (index named).

    Example:
        >>> read_image("cat.jpg", 0).size
        (640, 480)
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        picture = image
    elif isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(image, "read"):
        source = io.BytesIO(bytes(image)) if isinstance(image, (bytes, bytearray, memoryview)) else image
        name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__
        try:
            picture = Image.open(source)
            picture.load()  # decode now: a truncated file fails here, with its index
        except Exception as error:  # noqa: BLE001 - every way a file can fail to decode gets the index
            raise ValueError(f"{what}[{index}] ({name!r:.80}) is not a readable image: "
                             f"{type(error).__name__}: {error}") from error
    else:
        raise TypeError(f"{what}[{index}] must be a path, bytes, a binary file or a PIL image, "
                        f"got {type(image).__name__}")
    if picture.width == 0 or picture.height == 0:
        raise ValueError(f"{what}[{index}] is a zero-size image ({picture.width}x{picture.height})")
    return picture


def preprocess(picture: Any, size: int = 224) -> torch.Tensor:
    """EVA-CLIP's evaluation transform up to the pixel values: (3, size, size) uint8.

    Resize the short side to `size` (bicubic, in the image's own mode, as torchvision does on PIL images),
    centre-crop, and only then convert to RGB. Mean/std normalisation happens on the device.

    Example:
        >>> preprocess(Image.new("RGB", (640, 480))).shape
        torch.Size([3, 224, 224])
    """
    from PIL import Image

    width, height = picture.size
    if min(width, height) != size:
        if width <= height:
            new_w, new_h = size, int(size * height / width)
        else:
            new_w, new_h = int(size * width / height), size
        picture = picture.resize((new_w, new_h), Image.BICUBIC)
    width, height = picture.size
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    picture = picture.crop((left, top, left + size, top + size)).convert("RGB")
    return torch.from_numpy(np.asarray(picture, dtype=np.uint8).copy()).permute(2, 0, 1)


def image_items(images: Sequence[ImageInput], texts: Sequence[str] | None, size: int = 224,
                start: int = 0) -> list[ImageItem]:
    """Read and preprocess images (indices in errors count from `start`); `texts` None means image only."""
    return [ImageItem(preprocess(read_image(img, start + i), size), "" if texts is None else texts[i])
            for i, img in enumerate(images)]


def as_image_list(images: Any) -> list[ImageInput]:
    """A single image (path, bytes, PIL image) or a sequence of them, as a list.

    Example:
        >>> as_image_list("cat.jpg")
        ['cat.jpg']
    """
    from PIL import Image

    if isinstance(images, (str, os.PathLike, bytes, bytearray, Image.Image)):
        return [images]
    if not isinstance(images, Sequence):
        raise TypeError(f"images must be a path, bytes, a PIL image or a sequence of them, got {type(images).__name__}")
    return list(images)


def _split(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


class VisualizedFamily(Family):
    """BGE text encoder + EVA02 vision tower (see the module docstring for the composition rule).

    Items are texts (plain BGE) or `ImageItem`s (image + text); one batch holds one kind.
    """

    def __init__(self, tokenizer: Any, model: torch.nn.Module, spec: Any, visual: EvaVisionTower,
                 visual_proj: torch.nn.Linear) -> None:
        super().__init__(tokenizer, model, spec)
        self.visual = visual
        self.visual_proj = visual_proj
        self.image_tokens = visual.config.grid ** 2
        self.image_size = visual.config.image_size

    @classmethod
    def load(cls, path: str, spec: Any, device: torch.device, dtype: torch.dtype,
             text_model: str | None = None) -> VisualizedFamily:
        """Load a ``.pth`` and the config/tokenizer of its BGE text model (directory `text_model`)."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if text_model is None:
            raise ModelLoadError(f"{path}: a Visualized-BGE checkpoint needs its BGE text model (text_model=…)")
        try:
            weights = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - a damaged file is named
            raise ModelLoadError(f"{path}: damaged or unreadable ({type(error).__name__}: {error})") from error
        if not isinstance(weights, dict) or not all(any(k.startswith(p) for k in weights) for p in _PREFIXES[:2]):
            raise ModelLoadError(f"{path}: not a Visualized-BGE checkpoint (no bge_encoder.* / bge_embeddings.*)")
        missing = [p for p in ("visual_proj.weight", _VISUAL + "patch_embed.proj.weight") if p not in weights]
        if missing:
            raise ModelLoadError(f"{path}: not a Visualized-BGE checkpoint (missing {', '.join(missing)})")
        config = AutoConfig.from_pretrained(text_model, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(text_model, trust_remote_code=False)
        # The research code builds the text model from its config only: every text weight comes from the .pth.
        model = AutoModel.from_config(config, add_pooling_layer=False)
        model.encoder.load_state_dict(_split(weights, "bge_encoder."), strict=True)
        result = model.embeddings.load_state_dict(_split(weights, "bge_embeddings."), strict=False)
        if result.unexpected_keys or [k for k in result.missing_keys if not k.endswith("_ids")]:
            raise ModelLoadError(f"{path}: bge_embeddings.* do not fit {text_model} "
                                 f"(missing {result.missing_keys}, unexpected {result.unexpected_keys})")
        visual_weights = _split(weights, _VISUAL)
        visual = EvaVisionTower(EvaVisionConfig.from_state_dict(visual_weights))
        visual.load_state_dict(visual_weights, strict=True)
        proj = weights["visual_proj.weight"]
        visual_proj = torch.nn.Linear(proj.shape[1], proj.shape[0])
        visual_proj.load_state_dict(_split(weights, "visual_proj."), strict=True)
        if proj.shape[0] != config.hidden_size:
            raise ModelLoadError(f"{path}: visual_proj gives {proj.shape[0]} values, {text_model} is "
                                 f"{config.hidden_size} wide")
        modules = [m.to(device=device, dtype=dtype).eval() for m in (model, visual, visual_proj)]
        return cls(tokenizer, modules[0], spec, modules[1], modules[2])

    def tokenize(self, items: list[Any], max_length: int, options: dict[str, Any]) -> list[TokenizedItem]:
        if not items or isinstance(items[0], str):
            return tokenize_texts(self.tokenizer, items, max_length)
        n = self.image_tokens
        if max_length < n + 2:
            raise ValueError(f"max_length={max_length} leaves no room for the {n} image tokens and [CLS] [SEP]")
        texts = tokenize_texts(self.tokenizer, [item.text for item in items], max_length - n)
        # Placeholder ids where the image tokens go: they make the engine count and mask those
        # positions; `forward` replaces their embeddings.
        return [TokenizedItem([t.ids[0], *([self.pad_token_id] * n), *t.ids[1:]], t.over_length, item.pixels)
                for t, item in zip(texts, items)]

    def forward(self, batch: Batch, options: dict[str, Any]) -> Pending:
        if batch.metas and batch.metas[0] is not None:
            hidden = self._composed_states(batch)
        else:
            hidden = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        vectors = hidden[:, 0].float()
        if options.get("normalize", self.spec.normalize):
            vectors = F.normalize(vectors, dim=-1)
        return Pending({"dense": vectors}, split_rows("dense"))

    def image_token_states(self, pixels: torch.Tensor) -> torch.Tensor:
        """BGE input rows of the images' patch tokens before position rows and LayerNorm: (B, N, hidden)."""
        dtype = self.visual_proj.weight.dtype
        mean = torch.tensor(IMAGE_MEAN, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGE_STD, device=pixels.device).view(1, 3, 1, 1)
        normalised = ((pixels.float() / 255.0 - mean) / std).to(dtype)
        return self.visual_proj(self.visual(normalised)[:, 1:])

    def _composed_states(self, batch: Batch) -> torch.Tensor:
        embeddings = self.model.embeddings
        device = batch.input_ids.device
        pixels = torch.stack(batch.metas).to(device, non_blocking=True)
        n, width = self.image_tokens, batch.input_ids.shape[1]
        # Sequence order is [CLS, image x N, text[1:]]: position row = index in the sequence (raw rows, no
        # XLM-R padding offset, as the research code does).
        positions = embeddings.position_embeddings(torch.arange(width, device=device))[None]
        rows = embeddings.word_embeddings(batch.input_ids) + embeddings.token_type_embeddings(
            torch.zeros_like(batch.input_ids))
        # Image rows get a position row but no token-type row.
        rows = torch.cat([rows[:, :1], self.image_token_states(pixels), rows[:, 1 + n:]], dim=1) + positions
        hidden = embeddings.LayerNorm(rows)
        mask = batch.attention_mask[:, None, None, :].to(hidden.dtype)
        additive = (1.0 - mask) * torch.finfo(hidden.dtype).min
        return self.model.encoder(hidden, attention_mask=additive).last_hidden_state
