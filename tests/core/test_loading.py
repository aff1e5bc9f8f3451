"""Loading: heads are required and read safely; paths are used as given; one copy of weights per model."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from bge_core import Embedder, ModelLoadError, Reranker, clear_cache, load_model


@pytest.fixture
def m3_copy(m3_path, tmp_path):
    return shutil.copytree(m3_path, tmp_path / "m3")


@pytest.mark.parametrize("head", ["sparse_linear.pt", "colbert_linear.pt"])
def test_missing_head_is_an_error_naming_the_file(m3_copy, head):
    os.remove(m3_copy / head)
    with pytest.raises(ModelLoadError, match=head):
        load_model(str(m3_copy), device="cpu", family="m3")


def test_truncated_head_is_an_error_naming_the_file(m3_copy):
    path = m3_copy / "sparse_linear.pt"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ModelLoadError, match="sparse_linear.pt"):
        load_model(str(m3_copy), device="cpu")


def test_wrong_shape_head_is_an_error(m3_copy):
    torch.save(torch.nn.Linear(7, 1).state_dict(), m3_copy / "sparse_linear.pt")
    with pytest.raises(ModelLoadError, match="hidden size"):
        load_model(str(m3_copy), device="cpu")


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_objects_in_head_files_are_refused(m3_copy):
    with open(m3_copy / "colbert_linear.pt", "wb") as fh:
        pickle.dump({"weight": _Payload(), "bias": 1}, fh)
    torch.save({"weight": torch.zeros(1), "evil": _Payload()}, m3_copy / "sparse_linear.pt")
    with pytest.raises(ModelLoadError, match="linear.pt"):
        load_model(str(m3_copy), device="cpu")


def test_unknown_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model directory"):
        Embedder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        Embedder(str(tmp_path / "empty"))


def test_offline_hub_id_fails_fast_with_one_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub"):
        Embedder("BAAI/not-a-real-model-for-tests")


def test_same_checkpoint_shares_one_loaded_copy(m3_path, cross_encoder_path):
    a, b = Embedder(m3_path, device="cpu"), Embedder(m3_path, device="cpu", query_instruction="Q: ")
    assert a.loaded is b.loaded
    assert Embedder(a).loaded is a.loaded
    assert Reranker(cross_encoder_path, device="cpu").loaded is Reranker(cross_encoder_path, device="cpu").loaded


def test_symlinked_and_dotted_paths_load_as_given(m3_path, tmp_path):
    link = tmp_path / "linked-m3"
    link.symlink_to(m3_path)
    dotted = os.path.join(str(tmp_path), "..", tmp_path.name, "linked-m3")
    a = Embedder(str(link), device="cpu")
    assert a.family == "m3"
    assert Embedder(dotted, device="cpu").loaded is a.loaded  # the same files: one copy


def test_registry_defaults_follow_the_model_id(dense_path, tmp_path):
    named = tmp_path / "bge-small-en-v1.5"
    named.symlink_to(dense_path)
    assert Embedder(str(named), device="cpu").query_instruction.startswith("Represent this sentence")
    assert Embedder(str(named), device="cpu", query_instruction="").query_instruction is None
    assert Embedder(dense_path, device="cpu").query_instruction is None


def test_warm_up_runs_once_per_checkpoint_and_changes_no_output(m3_path, cross_encoder_path, parity_texts):
    clear_cache()
    cold = Embedder(m3_path, device="cpu", reuse_outputs=False)
    assert cold.loaded.warmed_up_s is None, "on CPU a model is not warmed unless asked"
    before = cold.encode(parity_texts, sparse=True, colbert=True)
    warm = Embedder(m3_path, device="cpu", reuse_outputs=False, warm_up=True)
    assert warm.loaded is cold.loaded and warm.loaded.warmed_up_s is not None and warm.loaded.warmed_up_s >= 0
    after = warm.encode(parity_texts, sparse=True, colbert=True)
    assert np.array_equal(before.dense, after.dense)
    assert before.lexical_weights == after.lexical_weights
    reranker = Reranker(cross_encoder_path, device="cpu", warm_up=True)
    assert reranker.loaded.warmed_up_s is not None
    assert reranker.score([("q", "p")]).shape == (1,)


@pytest.mark.parametrize("dtype", ["fp8", "FP8", "float8"])
def test_fp8_without_fp8_tensor_cores_is_a_clear_error(m3_path, dtype):
    """dtype="fp8" runs only on GPUs with FP8 tensor cores; elsewhere it is refused at construction
    (here: CPU), for one device and for a list of devices alike, and nothing is cached."""
    with pytest.raises(ValueError, match=r"fp8.*compute capability 8\.9"):
        Embedder(m3_path, device="cpu", dtype=dtype)
    with pytest.raises(ValueError, match=r"fp8.*compute capability 8\.9"):
        Embedder(m3_path, device=["cpu", "cpu"], dtype=dtype)
    assert Embedder(m3_path, device="cpu").encode(["still fine"]).dense.shape[0] == 1
