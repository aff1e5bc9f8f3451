"""Parity with LM_Cocktail 0.0.4 (the oracle): hand-weighted merges tensor by tensor, weights from examples.

LM_Cocktail loads every model in memory and returns the merged transformers model; we compare its
state dict with the tensors `bge_core.merge` streamed into model.safetensors.
"""

from __future__ import annotations

import os
import random

import LM_Cocktail
import pytest
import torch
from safetensors.torch import load_file

from bge_core.merge import mix_models, mix_models_with_data

HAND_TOL = 1e-6
DATA_TOL = 1e-4


def merged_tensors(path: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(path, "model.safetensors"))


def assert_same_tensors(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], tol: float,
                        model: str) -> None:
    """Every tensor of the input checkpoints was written and equals the oracle's. (The oracle's state dict
    also holds tied aliases such as lm_head, and, for checkpoints saved without a pooler, a pooler that
    transformers initialises at random on load: neither is in the checkpoint, so neither is compared.)"""
    assert set(ours) == set(load_file(os.path.join(model, "model.safetensors")))
    for name, tensor in ours.items():
        assert name in reference, name
        assert tensor.dtype == reference[name].dtype and tensor.shape == reference[name].shape, name
        delta = (tensor.double() - reference[name].double()).abs().max().item()
        assert delta <= tol, (name, delta)



def printed_weights(text: str, models: list[str]) -> list[float]:
    """The weights LM_Cocktail prints after '***weight for each model***'."""
    lines = text.split("***weight for each model***")[-1].splitlines()
    found = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(tuple(models))}
    return [found[m] for m in models]


@pytest.mark.parametrize("family, model_type", [
    ("dense_models", "encoder"), ("m3_models", "encoder"), ("reranker_models", "reranker"),
    ("decoder_models", "decoder"),
])
def test_hand_weights_equal_lm_cocktail(request, tmp_path, family, model_type):
    models = request.getfixturevalue(family)[:2]
    weights = [0.35, 0.65]
    result = mix_models(models, weights, tmp_path / "out", model_type=model_type)
    reference = LM_Cocktail.mix_models(models, model_type, weights).state_dict()
    assert_same_tensors(merged_tensors(result.output_path), reference, HAND_TOL, models[0])
    # and the merge is a real mix: it equals neither input
    first = load_file(os.path.join(models[0], "model.safetensors"))
    assert any(not torch.equal(t, first[k]) for k, t in merged_tensors(result.output_path).items())


def test_three_dense_models_auto_type(dense_models, tmp_path):
    weights = [0.2, 0.5, 0.3]
    result = mix_models(dense_models, weights, tmp_path / "out")
    assert result.model_type == "encoder"
    reference = LM_Cocktail.mix_models(dense_models, "encoder", weights).state_dict()
    assert_same_tensors(merged_tensors(result.output_path), reference, HAND_TOL, dense_models[0])


def test_m3_heads_are_the_weighted_sum(m3_models, tmp_path):
    weights = [0.25, 0.75]
    out = mix_models(m3_models, weights, tmp_path / "out").output_path
    for head in ("colbert_linear.pt", "sparse_linear.pt"):
        inputs = [torch.load(os.path.join(m, head), weights_only=True) for m in m3_models]
        merged = torch.load(os.path.join(out, head), weights_only=True)
        assert set(merged) == {"weight", "bias"}
        for key in merged:
            expected = weights[0] * inputs[0][key] + weights[1] * inputs[1][key]
            assert (merged[key] - expected).abs().max().item() <= HAND_TOL
            if not torch.equal(inputs[0][key], inputs[1][key]):  # (every tiny sparse head has bias 0.6)
                assert not torch.equal(merged[key], inputs[0][key])
    assert not torch.equal(torch.load(os.path.join(out, "colbert_linear.pt"))["weight"],
                           torch.load(os.path.join(m3_models[0], "colbert_linear.pt"))["weight"])


@pytest.mark.parametrize("family", ["dense_models", "m3_models"])
def test_encoder_data_weights_equal_lm_cocktail(request, tmp_path, capsys, retrieval_examples, family):
    models = request.getfixturevalue(family)[:2]
    options = dict(temperature=0.5, batch_size=2, neg_number=3)
    random.seed(11)  # LM_Cocktail samples negatives from the global generator
    reference_model = LM_Cocktail.mix_models_with_data(models, "encoder", retrieval_examples, max_input_length=512,
                                                       **options)
    expected = printed_weights(capsys.readouterr().out, models)
    result = mix_models_with_data(models, retrieval_examples, tmp_path / "out", seed=11, max_input_length=512,
                                  **options)
    assert result.method == "data" and result.model_type == "encoder"
    assert result.weights == pytest.approx(expected, abs=DATA_TOL)
    assert abs(result.weights[0] - result.weights[1]) > 1e-3  # the examples really tell the models apart
    assert_same_tensors(merged_tensors(result.output_path), reference_model.state_dict(), DATA_TOL, models[0])


def test_decoder_data_weights_equal_lm_cocktail(decoder_models, decoder_examples, tmp_path, capsys):
    options = dict(temperature=1.0, batch_size=2, max_input_length=64)
    reference_model = LM_Cocktail.mix_models_with_data(decoder_models, "decoder", decoder_examples, **options)
    expected = printed_weights(capsys.readouterr().out, decoder_models)
    result = mix_models_with_data(decoder_models, decoder_examples, tmp_path / "out", **options)
    assert result.model_type == "decoder"
    assert result.weights == pytest.approx(expected, abs=DATA_TOL)
    assert abs(result.weights[0] - result.weights[1]) > 1e-3
    assert_same_tensors(merged_tensors(result.output_path), reference_model.state_dict(), DATA_TOL,
                        decoder_models[0])
