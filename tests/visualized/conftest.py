"""Tiny Visualized-BGE checkpoints (base layout on tiny BERT, m3 layout on tiny XLM-R) and test images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.visualized.fixtures import build_visualized


@pytest.fixture(scope="session")
def visualized_base(checkpoint_dir, dense_path) -> tuple[str, str]:
    """(.pth, text model dir) in Visualized_base_en_v1.5.pth's layout."""
    return build_visualized(str(checkpoint_dir / "visualized" / "Visualized_base_en_v1.5.pth"), dense_path, 16), \
        dense_path


@pytest.fixture(scope="session")
def visualized_m3(checkpoint_dir, m3_path) -> tuple[str, str]:
    """(.pth, text model dir) in Visualized_m3.pth's layout."""
    return build_visualized(str(checkpoint_dir / "visualized-m3" / "Visualized_m3.pth"), m3_path, 14, seed=1), m3_path


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A random image (smooth enough that resizing matters, varied enough that images differ)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(max(height // 8, 1), max(width // 8, 1), 3), dtype=np.uint8)
    picture = Image.fromarray(base).resize((width, height), Image.BILINEAR)
    return picture.convert(mode)


def png_bytes(picture: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> list[str]:
    """Image files of different sizes, formats and modes (landscape, portrait, exact 224, tiny, grey, RGBA, P)."""
    folder = tmp_path_factory.mktemp("images")
    specs = [((320, 240), "RGB", "jpg"), ((180, 400), "RGB", "png"), ((224, 224), "RGB", "png"),
             ((7, 5), "RGB", "png"), ((300, 300), "L", "png"), ((260, 230), "RGBA", "png"), ((250, 240), "P", "png")]
    paths = []
    for i, (size, mode, ext) in enumerate(specs):
        path = folder / f"image{i}.{ext}"
        noise_image(*size, mode=mode, seed=i).save(path)
        paths.append(str(path))
    return paths
