"""Bad images and mismatched inputs: errors that name the index; wrong model kinds: clear errors."""

from __future__ import annotations

import pytest
from PIL import Image

from bge_core import Embedder, ModelLoadError
from tests.visualized.conftest import noise_image, png_bytes


@pytest.fixture(scope="module")
def model(visualized_base) -> Embedder:
    pth, text_dir = visualized_base
    return Embedder(pth, text_model=text_dir, device="cpu")


def test_unreadable_file_names_its_index(model, tmp_path, image_files):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    with pytest.raises(ValueError, match=r"images\[1\].*not a readable image"):
        model.encode_images([image_files[0], str(text_file)])


def test_missing_file_names_its_index(model, tmp_path, image_files):
    with pytest.raises(ValueError, match=r"images\[2\]"):
        model.encode_images([image_files[0], image_files[1], str(tmp_path / "nope.png")])


def test_truncated_file_names_its_index(model, tmp_path):
    data = png_bytes(noise_image(100, 100))
    with pytest.raises(ValueError, match=r"images\[0\]"):
        model.encode_images([data[: len(data) // 2]])


def test_zero_size_image_names_its_index(model):
    with pytest.raises(ValueError, match=r"images\[1\] is a zero-size image"):
        model.encode_images([noise_image(10, 10), Image.new("RGB", (0, 0))])


def test_wrong_type_names_its_index(model):
    with pytest.raises(TypeError, match=r"images\[1\]"):
        model.encode_images([noise_image(10, 10), 42])


def test_mismatched_lengths(model):
    with pytest.raises(ValueError, match=r"2 images but 1 texts.*index 1"):
        model.encode_multimodal([noise_image(10, 10), noise_image(20, 20)], ["only one"])
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        model.encode_multimodal([noise_image(10, 10)], [None])


def test_images_on_a_text_model_is_an_error(dense_path):
    with pytest.raises(ValueError, match="Visualized-BGE"):
        Embedder(dense_path, device="cpu").encode_images([noise_image(10, 10)])


def test_bad_checkpoint_files(tmp_path, dense_path):
    with pytest.raises(ModelLoadError, match="no such"):
        Embedder(str(tmp_path / "missing.pth"), text_model=dense_path, device="cpu")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="broken.pth"):
        Embedder(str(broken), text_model=dense_path, device="cpu")
    with pytest.raises(ModelLoadError, match="text_model"):
        Embedder(str(broken), device="cpu")


def test_empty_list_gives_empty_matrix(model):
    assert model.encode_images([]).dense.shape == (0, model.dim)
