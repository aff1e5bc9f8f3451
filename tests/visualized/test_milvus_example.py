"""examples/milvus_multimodal.py on tiny checkpoints and Milvus Lite: its three searches rank as core's vectors do."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from bge_core import Embedder
from tests.visualized.conftest import noise_image

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "milvus_multimodal.py"


def load_example():
    spec = importlib.util.spec_from_file_location("example_milvus_multimodal", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def uri(tmp_path):
    path = tmp_path / "multimodal.db"
    yield path
    try:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(str(path))
    except ImportError:
        pass


def test_milvus_multimodal_example(visualized_base, cross_encoder_path, tmp_path, uri, capsys):
    pth, text_dir = visualized_base
    folder = tmp_path / "images"
    folder.mkdir()
    for i, size in enumerate([(120, 90), (64, 64), (200, 300), (90, 90), (150, 100)]):
        noise_image(*size, seed=10 + i).save(folder / f"photo_{i}.png")
    argv = ["--model", pth, "--text-model", text_dir, "--images", str(folder), "--uri", str(uri), "--device", "cpu",
            "--query", "a panda", "--modifier", "in red", "--reranker", cross_encoder_path, "-k", "3"]
    module = load_example()
    assert module.main(argv) == 0
    assert module.main(argv) == 0  # twice: upsert keeps one row per image
    out = capsys.readouterr().out.split("5 rows in")[-1]
    assert re.search(r"^ \S+$", out.split("\n")[0]) is not None, out
    sections = {block.split("\n", 1)[0]: re.findall(r"^\s+\d+\. +(-?\d+\.\d+)  (\S+)$", block, flags=re.M)
                for block in out.split("\n\n")[1:]}
    paths = sorted(str(p) for p in folder.iterdir())
    model = Embedder(pth, text_model=text_dir, device="cpu")
    images = model.encode_images(paths).dense
    queries = {
        "text: a panda": model.encode(["a panda"]).dense[0],
        f"image: {paths[0]}": images[0],
        f"image + text: {paths[0]} + in red": model.encode_multimodal([paths[0]], ["in red"]).dense[0],
    }
    for title, query in queries.items():
        scores = images @ query
        best = np.argsort(-scores)[:3]
        assert [name for _, name in sections[title]] == [Path(paths[i]).name for i in best], (title, out)
        assert [float(s) for s, _ in sections[title]] == pytest.approx(scores[best].tolist(), abs=1e-3)
    assert sections[f"image: {paths[0]}"][0][1] == "photo_0.png"
    assert len(sections["text, reranked by file name: a panda"]) == 3
