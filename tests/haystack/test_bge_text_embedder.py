from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from haystack.utils import ComponentDevice, Secret

from bge_core import Embedder
from haystack_integrations.components.embedders.bge import BGETextEmbedder, _backend
from tests.haystack.conftest import TOKEN_DICT

TYPE = "haystack_integrations.components.embedders.bge.bge_text_embedder.BGETextEmbedder"


def test_to_dict_defaults():
    # Building and serializing loads nothing, so the default hub id works offline.
    data = BGETextEmbedder().to_dict()
    assert data == {
        "type": TYPE,
        "init_parameters": {
            "model": "BAAI/bge-m3",
            "device": ComponentDevice.resolve_device(None).to_dict(),
            "token": TOKEN_DICT,
            "prefix": None,
            "suffix": "",
            "dtype": None,
            "max_length": None,
            "batch_tokens": None,
            "normalize_embeddings": True,
            "truncate": True,
            "progress_bar": False,
        },
    }


def test_to_dict_from_dict_with_parameters(m3_path, cpu):
    embedder = BGETextEmbedder(
        m3_path, device=cpu, token=None, prefix="Q: ", suffix=" !", dtype="fp32", max_length=64,
        batch_tokens=1024, normalize_embeddings=False, truncate=False, progress_bar=True,
    )
    data = embedder.to_dict()
    assert data == {
        "type": TYPE,
        "init_parameters": {
            "model": m3_path, "device": {"type": "single", "device": "cpu"}, "token": None, "prefix": "Q: ",
            "suffix": " !", "dtype": "fp32", "max_length": 64, "batch_tokens": 1024,
            "normalize_embeddings": False, "truncate": False, "progress_bar": True,
        },
    }
    copy = BGETextEmbedder.from_dict(data)
    assert copy.to_dict() == data
    assert isinstance(copy.device, ComponentDevice) and copy.device.to_torch_str() == "cpu"
    assert data["init_parameters"]["device"] == {"type": "single", "device": "cpu"}  # input not mutated


def test_from_dict_restores_secret(m3_path, cpu):
    copy = BGETextEmbedder.from_dict(BGETextEmbedder(m3_path, device=cpu).to_dict())
    assert isinstance(copy.token, Secret)
    assert copy.token.to_dict() == TOKEN_DICT


def test_core_embedder_as_model_is_stored_as_its_directory(m3_path, cpu):
    core = Embedder(m3_path, device="cpu")
    embedder = BGETextEmbedder(core)
    params = embedder.to_dict()["init_parameters"]
    assert params["model"] == m3_path
    assert params["device"] == {"type": "single", "device": "cpu"}
    assert params["dtype"] == "float32"
    embedder.warm_up()
    assert embedder._embedder.loaded is core.loaded


def test_core_embedder_with_other_device_is_rejected(m3_path):
    with pytest.raises(ValueError, match="loaded on"):
        BGETextEmbedder(Embedder(m3_path, device="cpu"), device=ComponentDevice.from_str("cuda:1"))


def test_wrong_model_type():
    with pytest.raises(TypeError, match="model must be"):
        BGETextEmbedder(model=42)


def test_embedding_is_the_core_query_vector(m3_path, cpu):
    embedder = BGETextEmbedder(m3_path, device=cpu)
    out = embedder.run(text="What is BGE-M3?")
    expected = Embedder(m3_path, device="cpu").encode_queries(["What is BGE-M3?"]).dense[0]
    assert isinstance(out["embedding"], list) and all(isinstance(x, float) for x in out["embedding"])
    np.testing.assert_allclose(out["embedding"], expected, rtol=1e-6, atol=1e-6)
    assert np.linalg.norm(out["embedding"]) == pytest.approx(1.0, abs=1e-5)


def test_suffix_and_no_normalisation(m3_path, cpu):
    out = BGETextEmbedder(m3_path, device=cpu, suffix=" end", normalize_embeddings=False).run("text")
    expected = Embedder(m3_path, device="cpu", normalize=False).encode(["text end"]).dense[0]
    np.testing.assert_allclose(out["embedding"], expected, rtol=1e-6, atol=1e-6)
    assert np.linalg.norm(out["embedding"]) != pytest.approx(1.0, abs=1e-3)


@pytest.fixture(scope="module")
def en_path(dense_path, tmp_path_factory):
    # A copy named like a published English BGE model, so the registry gives it its query instruction.
    return shutil.copytree(dense_path, os.path.join(tmp_path_factory.mktemp("en"), "bge-small-en-v1.5"))


def test_prefix_none_uses_the_registry_instruction(en_path, cpu):
    core = Embedder(en_path, device="cpu")
    assert core.query_instruction  # the premise: this checkpoint has one
    out = BGETextEmbedder(en_path, device=cpu).run("pandas")
    with_instruction = core.encode([core.query_instruction + "pandas"]).dense[0]
    np.testing.assert_allclose(out["embedding"], with_instruction, rtol=1e-6, atol=1e-6)


def test_empty_prefix_turns_the_instruction_off(en_path, cpu):
    out = BGETextEmbedder(en_path, device=cpu, prefix="").run("pandas")
    plain = Embedder(en_path, device="cpu").encode(["pandas"]).dense[0]
    np.testing.assert_allclose(out["embedding"], plain, rtol=1e-6, atol=1e-6)


def test_custom_prefix(en_path, cpu):
    out = BGETextEmbedder(en_path, device=cpu, prefix="Query: ").run("pandas")
    expected = Embedder(en_path, device="cpu").encode(["Query: pandas"]).dense[0]
    np.testing.assert_allclose(out["embedding"], expected, rtol=1e-6, atol=1e-6)


def test_warm_up_loads_once(m3_path, cpu, monkeypatch):
    calls = []
    real = _backend.load_embedder
    monkeypatch.setattr(_backend, "load_embedder", lambda *a, **k: calls.append(1) or real(*a, **k))
    embedder = BGETextEmbedder(m3_path, device=cpu)
    embedder.warm_up()
    first = embedder._embedder
    embedder.warm_up()
    embedder.run("hello")
    assert embedder._embedder is first
    assert len(calls) == 1


def test_run_warms_up_by_itself(m3_path, cpu):
    embedder = BGETextEmbedder(m3_path, device=cpu)
    assert embedder._embedder is None
    assert len(embedder.run("hi")["embedding"]) == Embedder(m3_path, device="cpu").dim


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["a list"]])
def test_wrong_input_type(m3_path, cpu, bad):
    with pytest.raises(TypeError, match="BGETextEmbedder expects a string"):
        BGETextEmbedder(m3_path, device=cpu).run(bad)


def test_empty_text_is_valid(m3_path, cpu):
    assert len(BGETextEmbedder(m3_path, device=cpu).run("")["embedding"]) > 0


def test_truncate_false_rejects_long_text(m3_path, cpu):
    embedder = BGETextEmbedder(m3_path, device=cpu, max_length=8, truncate=False)
    with pytest.raises(ValueError):
        embedder.run(" ".join(["word"] * 50))
    assert len(BGETextEmbedder(m3_path, device=cpu, max_length=8).run(" ".join(["word"] * 50))["embedding"]) > 0


def test_device_map_is_rejected(m3_path):
    from haystack.utils import Device, DeviceMap

    device_map = ComponentDevice.from_multiple(DeviceMap({"layer": Device.cpu()}))
    with pytest.raises(ValueError, match="one device"):
        BGETextEmbedder(m3_path, device=device_map)


async def test_run_async_matches_run(m3_path, cpu):
    embedder = BGETextEmbedder(m3_path, device=cpu)
    assert await embedder.run_async(text="async query") == embedder.run(text="async query")
    with pytest.raises(TypeError):
        await embedder.run_async(text=5)


def test_token_is_accepted_for_local_paths(m3_path, cpu):
    embedder = BGETextEmbedder(m3_path, device=cpu, token=Secret.from_token("hf_not_used_for_a_path"))
    assert len(embedder.run("x")["embedding"]) > 0
