"""Visualized-BGE in bge_core equals the independent oracle (research equations on library parts) on tiny
checkpoints in the released .pth layouts; text-only equals plain BGE on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bge_core import Embedder
from bge_core.models.eva_vit import rope_tables
from tests.visualized.conftest import noise_image, png_bytes
from tests.visualized.fixtures import oracle_rope
from tests.visualized.oracle import OracleVisualizedBGE

TEXTS = ["a red dress", "", "The giant panda is a bear native to south central China.", "大熊猫 🐼"]
LAYOUTS = ["visualized_base", "visualized_m3"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(params=LAYOUTS)
def layout(request) -> tuple[Embedder, OracleVisualizedBGE, str]:
    pth, text_dir = request.getfixturevalue(request.param)
    return Embedder(pth, text_model=text_dir, device="cpu"), OracleVisualizedBGE(pth, text_dir), text_dir


def test_released_key_layout_loads_strictly(visualized_base, visualized_m3):
    for pth, _ in (visualized_base, visualized_m3):
        keys = list(torch.load(pth, weights_only=True))
        prefixes = list(dict.fromkeys(k.split(".")[0] for k in keys))
        assert prefixes == ["bge_encoder", "bge_embeddings", "bge_pooler", "model_visual", "visual_proj"]
        assert sum(k.startswith("bge_embeddings.") for k in keys) == 5
        # 4 + 2 rope + 23 per block + norm + head + logit_scale, as 287 = 4 + 2 + 12*23 + 2 + 2 + 1 in the real file
        assert sum(k.startswith("model_visual.") for k in keys) == 4 + 2 + 2 * 23 + 2 + 2 + 1


@pytest.mark.parametrize("grid", [14, 16])
def test_rope_tables_match_the_written_out_formula(grid):
    cos, sin = rope_tables(16, grid)
    ref_cos, ref_sin = oracle_rope(16, grid)
    assert torch.allclose(cos, ref_cos, atol=1e-5) and torch.allclose(sin, ref_sin, atol=1e-5)


def test_image_embeddings_equal_oracle(layout, image_files):
    model, oracle, _ = layout
    got = model.encode_images(image_files).dense
    want = np.stack([oracle.image(Image.open(p)).numpy() for p in image_files])
    assert got.shape == (len(image_files), model.dim)
    assert cosines(got, want).min() >= 0.99999
    assert np.abs(np.linalg.norm(got, axis=1) - 1).max() < 1e-5
    # different images really give different vectors (the test could fail)
    assert cosines(got[:1], got[1:]).max() < 0.999


def test_composed_embeddings_equal_oracle(layout, image_files):
    model, oracle, _ = layout
    pictures = image_files[:len(TEXTS)]
    got = model.encode_multimodal(pictures, TEXTS).dense
    want = np.stack([oracle.multimodal(Image.open(p), t).numpy() for p, t in zip(pictures, TEXTS)])
    assert cosines(got, want).min() >= 0.99999
    # the text changes the vector of the same image
    same_image = model.encode_multimodal([pictures[0]] * 2, ["a red dress", "a blue car"]).dense
    assert cosines(same_image[:1], same_image[1:])[0] < 0.9999


def test_text_embeddings_equal_oracle_and_plain_bge(layout, parity_texts):
    model, oracle, text_dir = layout
    got = model.encode(parity_texts).dense
    want = np.stack([oracle.text(t).numpy() for t in parity_texts[:-1]])  # the oracle does not truncate
    assert cosines(got[:-1], want).min() >= 0.99999
    plain = Embedder(text_dir, device="cpu", query_instruction="").encode(parity_texts).dense
    np.testing.assert_allclose(got, plain, atol=1e-5)


def test_image_inputs_paths_bytes_pil_give_the_same_vectors(layout, image_files):
    model, _, _ = layout
    path = image_files[0]
    vectors = model.encode_images([path, png_bytes(Image.open(path), "PNG"), Image.open(path)]).dense
    # JPEG file decoded by Pillow vs its PNG re-encoding: same pixels
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)


def test_batching_does_not_change_vectors(layout, image_files):
    model, _, _ = layout
    together = model.encode_multimodal(image_files, [f"text {i} " * i for i in range(len(image_files))]).dense
    alone = np.stack([model.encode_multimodal([p], [f"text {i} " * i]).dense[0] for i, p in enumerate(image_files)])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_over_long_text_is_cut_to_fit_the_image_tokens(visualized_base):
    pth, text_dir = visualized_base
    model = Embedder(pth, text_model=text_dir, device="cpu")
    long = "panda bamboo " * 400
    vector = model.encode_multimodal([noise_image(50, 50)], [long]).dense
    assert np.isfinite(vector).all()
    with pytest.raises(ValueError, match="index 0"):
        model.encode_multimodal([noise_image(50, 50)], [long], truncate=False)


def test_text_weights_come_from_the_pth(visualized_base, tmp_path):
    """The text model supplies config and tokenizer only (as the research code): other weights in its directory
    change nothing."""
    from tests.fixtures import checkpoints

    pth, text_dir = visualized_base
    other = checkpoints.build_bert_dense(str(tmp_path / "bge-tiny-other"), seed=7)
    ours = Embedder(pth, text_model=other, device="cpu").encode(TEXTS).dense
    plain_same = Embedder(text_dir, device="cpu").encode(TEXTS).dense
    plain_other = Embedder(other, device="cpu").encode(TEXTS).dense
    np.testing.assert_allclose(ours, plain_same, atol=1e-5)
    assert cosines(ours, plain_other).min() < 0.99


def test_pth_next_to_its_text_model_needs_no_text_model(visualized_base, tmp_path):
    import shutil

    pth, text_dir = visualized_base
    folder = tmp_path / "bge-base-en-v1.5"
    shutil.copytree(text_dir, folder)
    shutil.copy(pth, folder / "Visualized_base_en_v1.5.pth")
    picture = noise_image(90, 70)
    alone = Embedder(str(folder / "Visualized_base_en_v1.5.pth"), device="cpu").encode_images([picture]).dense
    given = Embedder(pth, text_model=text_dir, device="cpu").encode_images([picture]).dense
    np.testing.assert_allclose(alone, given, atol=1e-6)
