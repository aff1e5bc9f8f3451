"""Visualized-BGE equals an oracle assembled from library parts: the EVA02-CLIP tower from timm
(`eva02_base_patch16_clip_224` / `eva02_large_patch14_clip_224`, shrunk to the tiny checkpoint's sizes, weights
mapped by timm's own `checkpoint_filter_fn`), torchvision's preprocessing (as EVA-CLIP's `image_transform` for
evaluation), the BGE encoder from transformers and the composition rule written out in oracle.py.

timm hard-imports torchvision, which has no build for the dev machine's CPU torch, so this module skips there.
It computes on CPU in fp32 and is marked `gpu` so that it runs where the GPU tests run:

    PYTHONPATH=src:. python -m pytest -q -m gpu tests/visualized/test_timm_oracle.py

What Visualized-BGE reads from the tower (research/visual_bge, `Visualized_BGE.img_token_embedding`):
`model_visual.encode_image(images, normalize=False)` -> `EVAVisionTransformer.forward(x, return_all_features=True)`
= the token states (CLS + patches) of the last block, *before* the final `norm`; `encode_mm` then drops the CLS.
In timm that is `forward_features` with `norm` replaced by an identity.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.gpu


def _import_or_skip(name: str) -> ModuleType:
    """`pytest.importorskip`, but also for a torchvision built against another torch (that raises
    RuntimeError/OSError, not ImportError, and would otherwise break collection of the whole CPU suite)."""
    try:
        return importlib.import_module(name)
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"{name} does not import here ({type(error).__name__}: {error})", allow_module_level=True)


torchvision = _import_or_skip("torchvision")
timm = _import_or_skip("timm")

from timm.models.eva import Eva, checkpoint_filter_fn  # noqa: E402
from torchvision import transforms  # noqa: E402

from bge_core import Embedder  # noqa: E402
from tests.visualized.oracle import OracleVisualizedBGE, eva_tokens, pixels  # noqa: E402

LAYOUTS = ["visualized_base", "visualized_m3"]
TEXTS = ["a red dress", "", "The giant panda is a bear native to south central China.", "大熊猫 🐼"]
#: The timm model each released tower is (EVA02-CLIP-B-16 and EVA02-CLIP-L-14 of EVA-CLIP), by patch size.
TIMM_VARIANTS = {16: "eva02_base_patch16_clip_224", 14: "eva02_large_patch14_clip_224"}
_VISUAL = "model_visual.visual."


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def eva_clip_preprocess(size: int = 224) -> transforms.Compose:
    """EVA-CLIP's `image_transform(size, is_train=False)`: Resize(short side, bicubic), CenterCrop, RGB,
    ToTensor, Normalize with the OpenAI CLIP mean/std (timm's constants)."""
    from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    return transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        lambda picture: picture.convert("RGB"),
        transforms.ToTensor(),
        transforms.Normalize(mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
    ])


def tower_shape(sd: dict[str, torch.Tensor]) -> dict[str, int]:
    """Sizes of the checkpoint's tower, read from its tensors."""
    patch = sd[_VISUAL + "patch_embed.proj.weight"]
    blocks = {int(k[len(_VISUAL):].split(".")[1]) for k in sd if k.startswith(_VISUAL + "blocks.")}
    return {
        "patch": patch.shape[-1], "width": patch.shape[0], "depth": len(blocks),
        "head_dim": sd[_VISUAL + "rope.freqs_cos"].shape[1],
        "mlp_hidden": sd[_VISUAL + "blocks.0.mlp.w1.weight"].shape[0],
        "embed": sd[_VISUAL + "head.weight"].shape[0],
        "grid": round((sd[_VISUAL + "pos_embed"].shape[1] - 1) ** 0.5),
    }


def timm_eva(sd: dict[str, torch.Tensor]) -> Eva:
    """timm's registered EVA02-CLIP model of the checkpoint's patch size, with only its sizes overridden
    (qkv_fused=False, swiglu_mlp, scale_mlp, scale_attn_inner, use_rot_pos_emb, ref_feat_shape=(16, 16),
    mlp_ratio 4*2/3, global_pool 'token' all come from timm's own definition)."""
    shape = tower_shape(sd)
    model = timm.create_model(
        TIMM_VARIANTS[shape["patch"]], pretrained=False, embed_dim=shape["width"], depth=shape["depth"],
        num_heads=shape["width"] // shape["head_dim"], num_classes=shape["embed"],
    )
    assert type(model) is Eva, f"timm built {type(model).__name__}, not timm.models.eva.Eva (TIMM_USE_NAFLEX set?)"
    assert model.patch_embed.grid_size == (shape["grid"], shape["grid"]), (model.patch_embed.grid_size, shape)
    return model.eval()


def timm_state_dict(sd: dict[str, torch.Tensor], model: Eva) -> dict[str, torch.Tensor]:
    """The checkpoint's tower in timm's layout, by timm's `checkpoint_filter_fn`.

    ``model_visual.*`` of the .pth is the research CustomCLIP's state dict (``visual.*`` + ``logit_scale``), the
    EVA-CLIP / open_clip layout that `checkpoint_filter_fn` converts (prefix ``visual.``: w1/w2/w3 -> fc1_g /
    fc1_x / fc2, ffn_ln -> mlp.norm, inner_attn_ln -> attn.norm, q_bias/v_bias -> q_proj.bias/v_proj.bias; the
    saved rope tables are dropped, timm computes its own)."""
    clip = {k[len("model_visual."):]: v for k, v in sd.items() if k.startswith("model_visual.")}
    return checkpoint_filter_fn(clip, model)


def check_mapping(sd: dict[str, torch.Tensor], model: Eva, mapped: dict[str, torch.Tensor]) -> None:
    """Fail loudly, naming keys, unless the mapped tensors are exactly timm's state dict (names and shapes) and
    every tower tensor of the checkpoint except the rope tables was used."""
    want = model.state_dict()
    missing = sorted(set(want) - set(mapped))
    unexpected = sorted(set(mapped) - set(want))
    shapes = sorted(f"{k}: checkpoint {tuple(mapped[k].shape)} vs timm {tuple(want[k].shape)}"
                    for k in set(want) & set(mapped) if mapped[k].shape != want[k].shape)
    source = sorted(k for k in sd if k.startswith(_VISUAL) and ".rope." not in f".{k[len(_VISUAL):]}")
    problems = []
    if missing:
        problems.append(f"timm parameters not filled by checkpoint_filter_fn ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"mapped keys timm does not have ({len(unexpected)}): {unexpected}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {shapes}")
    if len(mapped) != len(source):
        problems.append(f"{len(source)} non-rope tensors under {_VISUAL!r} but {len(mapped)} mapped: "
                        "checkpoint_filter_fn dropped or merged some")
    if problems:
        raise AssertionError(
            f"timm {timm.__version__}: the checkpoint does not map one-to-one onto {type(model).__name__}; "
            "refusing to load with strict=False.\n  " + "\n  ".join(problems))


class TimmTower:
    """The oracle's tower from library parts: torchvision preprocessing + timm's EVA02, token states of the last
    block before the final norm, (1 + N, W), fp32 on CPU."""

    def __init__(self, pth: str) -> None:
        sd = torch.load(pth, map_location="cpu", weights_only=True)
        self.model = timm_eva(sd)
        mapped = timm_state_dict(sd, self.model)
        check_mapping(sd, self.model, mapped)
        self.model.load_state_dict(mapped, strict=True)
        # Visualized-BGE reads the blocks' output before the final norm (return_all_features=True)
        assert isinstance(self.model.norm, torch.nn.LayerNorm), type(self.model.norm)
        self.model.norm = torch.nn.Identity()
        self.preprocess = eva_clip_preprocess(self.model.patch_embed.img_size[0])

    @torch.no_grad()
    def __call__(self, picture: Image.Image) -> torch.Tensor:
        return self.model.forward_features(self.preprocess(picture)[None].float())[0]


@pytest.fixture(scope="module", params=LAYOUTS)
def layout(request) -> tuple[Embedder, OracleVisualizedBGE, TimmTower, str]:
    pth, text_dir = request.getfixturevalue(request.param)
    tower = TimmTower(pth)
    return Embedder(pth, text_model=text_dir, device="cpu"), OracleVisualizedBGE(pth, text_dir, tower=tower), \
        tower, pth


# -- the oracle's parts, each against the checkpoint / the hand-written oracle (they say which part broke) --------


@pytest.mark.parametrize("which", LAYOUTS)
def test_checkpoint_maps_one_to_one_onto_timm_eva(request, which):
    pth, _ = request.getfixturevalue(which)
    sd = torch.load(pth, map_location="cpu", weights_only=True)
    model = timm_eva(sd)
    mapped = timm_state_dict(sd, model)
    check_mapping(sd, model, mapped)
    model.load_state_dict(mapped, strict=True)
    loaded = model.state_dict()
    # the renames put each tensor where the research model uses it (spot checks, block 1)
    for research, ours in [("blocks.1.mlp.w1.weight", "blocks.1.mlp.fc1_g.weight"),
                           ("blocks.1.mlp.w2.weight", "blocks.1.mlp.fc1_x.weight"),
                           ("blocks.1.mlp.w3.weight", "blocks.1.mlp.fc2.weight"),
                           ("blocks.1.mlp.ffn_ln.weight", "blocks.1.mlp.norm.weight"),
                           ("blocks.1.attn.inner_attn_ln.bias", "blocks.1.attn.norm.bias"),
                           ("blocks.1.attn.q_bias", "blocks.1.attn.q_proj.bias"),
                           ("blocks.1.attn.v_bias", "blocks.1.attn.v_proj.bias"),
                           ("norm.weight", "norm.weight"), ("head.weight", "head.weight")]:
        assert torch.equal(loaded[ours], sd[_VISUAL + research]), (research, ours)
    assert model.blocks[0].attn.k_proj.bias is None  # EVA02: no k bias


@pytest.mark.parametrize("which", LAYOUTS)
def test_timm_rope_equals_the_tables_saved_in_the_checkpoint(request, which):
    """timm recomputes the rotary tables (the filter drops the saved ones): they must be the research model's."""
    pth, _ = request.getfixturevalue(which)
    sd = torch.load(pth, map_location="cpu", weights_only=True)
    sin, cos = timm_eva(sd).rope.get_embed().chunk(2, dim=-1)  # RotaryEmbeddingCat: [sin | cos] per token
    assert torch.allclose(cos, sd[_VISUAL + "rope.freqs_cos"], atol=1e-5)
    assert torch.allclose(sin, sd[_VISUAL + "rope.freqs_sin"], atol=1e-5)
    assert torch.allclose(cos, sd[_VISUAL + "blocks.0.attn.rope.freqs_cos"], atol=1e-5)


def test_torchvision_preprocessing_equals_the_oracle_pixels(image_files):
    preprocess = eva_clip_preprocess()
    for path in image_files:
        want = pixels(Image.open(path))
        got = preprocess(Image.open(path))
        assert got.shape == want.shape == (3, 224, 224), path
        assert torch.allclose(got, want, atol=1e-5), (path, (got - want).abs().max())


def test_timm_tokens_equal_the_hand_written_tower(layout, image_files):
    _, oracle, tower, _ = layout
    for path in image_files:
        picture = Image.open(path)
        got = tower(picture)
        want = eva_tokens(oracle.sd, pixels(picture), oracle.head_dim)
        assert got.shape == want.shape, (got.shape, want.shape)
        assert cosines(got.numpy(), want.numpy()).min() >= 0.99999, path


# -- the acceptance: bge_core equals the library-part oracle --------------------------------------------------------


def test_image_embeddings_equal_timm_oracle(layout, image_files):
    model, oracle, _, _ = layout
    got = model.encode_images(image_files).dense
    want = np.stack([oracle.image(Image.open(p)).numpy() for p in image_files])
    worst = cosines(got, want).min()
    print(f"image: min cos {worst:.8f}")
    assert worst >= 0.99999
    assert cosines(got[:1], got[1:]).max() < 0.999  # the images really differ


def test_composed_embeddings_equal_timm_oracle(layout, image_files):
    model, oracle, _, _ = layout
    pictures = image_files[:len(TEXTS)]
    got = model.encode_multimodal(pictures, TEXTS).dense
    want = np.stack([oracle.multimodal(Image.open(p), t).numpy() for p, t in zip(pictures, TEXTS)])
    worst = cosines(got, want).min()
    print(f"image+text: min cos {worst:.8f}")
    assert worst >= 0.99999


def test_text_embeddings_equal_timm_oracle(layout, parity_texts):
    model, oracle, _, _ = layout
    texts = parity_texts[:-1]  # the oracle does not truncate; the last one is over-long
    got = model.encode(texts).dense
    want = np.stack([oracle.text(t).numpy() for t in texts])
    worst = cosines(got, want).min()
    print(f"text: min cos {worst:.8f}")
    assert worst >= 0.99999
