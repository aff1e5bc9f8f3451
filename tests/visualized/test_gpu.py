"""Visualized-BGE on a GPU (`pytest -m gpu`): fp32 on CUDA equals CPU; bf16/fp16 stay within bounds of fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bge_core import Embedder
from tests.visualized.conftest import noise_image
from tests.visualized.fixtures import build_visualized

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TEXTS = ["a red dress", "", "The giant panda is a bear native to south central China."]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module", params=[16, 14], ids=["base", "m3"])
def checkpoint(request, tmp_path_factory):
    from tests.fixtures import checkpoints

    root = tmp_path_factory.mktemp(f"visualized-gpu-{request.param}")
    # A moderate text init (as tests/gpu does): the CPU suite's 0.5 amplifies half-precision rounding.
    build = checkpoints.build_bert_dense if request.param == 16 else checkpoints.build_m3
    text_dir = build(str(root / "text"), init=0.05)
    return build_visualized(str(root / "Visualized.pth"), text_dir, request.param), text_dir


def outputs(model: Embedder, pictures: list) -> list[np.ndarray]:
    return [model.encode_images(pictures).dense, model.encode_multimodal(pictures[:3], TEXTS).dense,
            model.encode(TEXTS).dense]


@pytest.fixture(scope="module")
def pictures() -> list:
    return [noise_image(w, h, seed=i) for i, (w, h) in enumerate([(320, 240), (224, 224), (100, 300), (50, 40)])]


def test_cuda_fp32_equals_cpu(checkpoint, pictures):
    pth, text_dir = checkpoint
    cpu = outputs(Embedder(pth, text_model=text_dir, device="cpu"), pictures)
    gpu = outputs(Embedder(pth, text_model=text_dir, device="cuda", dtype="fp32"), pictures)
    for a, b in zip(cpu, gpu):
        assert cosines(a, b).min() >= 0.9999  # cuDNN convolutions may use TF32


@pytest.mark.parametrize("dtype, bound", [("bf16", 0.99), ("fp16", 0.999)])
def test_half_precision_within_bounds(checkpoint, pictures, dtype, bound):
    pth, text_dir = checkpoint
    full = outputs(Embedder(pth, text_model=text_dir, device="cuda", dtype="fp32"), pictures)
    half = outputs(Embedder(pth, text_model=text_dir, device="cuda", dtype=dtype), pictures)
    for kind, a, b in zip(("image", "image+text", "text"), full, half):
        worst = cosines(a, b).min()
        print(f"{dtype} {kind}: min cos {worst:.6f}")
        assert worst >= bound, (kind, worst)
        assert b.dtype == np.float32
