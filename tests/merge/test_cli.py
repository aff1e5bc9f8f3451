"""`bge merge`: hand weights and weights from a JSONL file of examples; the weights are printed and saved."""

from __future__ import annotations

import json
import os

import pytest
from safetensors.torch import load_file

from bge_core.merge import mix_models_with_data
from tests.cli.conftest import bge, write_jsonl


def read_record(out) -> dict:
    with open(os.path.join(out, "merge_weights.json"), encoding="utf-8") as fh:
        return json.load(fh)


def test_merge_with_weights(reranker_models, tmp_path):
    out = tmp_path / "out"
    result = bge("merge", *reranker_models, "--weights", "0.3, 0.7", "-o", out)
    assert result.exit_code == 0, result.output
    assert "0.300000" in result.stdout and "0.700000" in result.stdout
    assert f"merged 2 reranker models into {out}" in result.stdout
    record = read_record(out)
    assert record["weights"] == [0.3, 0.7] and record["method"] == "weights" and record["model_type"] == "reranker"
    inputs = [load_file(os.path.join(m, "model.safetensors")) for m in reranker_models]
    merged = load_file(out / "model.safetensors")
    name = "classifier.out_proj.weight"
    assert (merged[name] - (0.3 * inputs[0][name] + 0.7 * inputs[1][name])).abs().max() <= 1e-6
    again = bge("merge", *reranker_models, "--weights", "0.5,0.5", "-o", out)  # occupied: needs --overwrite
    assert again.exit_code == 1 and "--overwrite" in again.stderr
    assert bge("merge", *reranker_models, "--weights", "0.5,0.5", "-o", out, "--overwrite").exit_code == 0
    assert read_record(out)["weights"] == [0.5, 0.5]


@pytest.mark.parametrize("temperature", [0.5])
def test_merge_with_data(dense_models, retrieval_examples, tmp_path, temperature):
    data = write_jsonl(tmp_path / "examples.jsonl", retrieval_examples)
    out = tmp_path / "out"
    result = bge("merge", *dense_models[:2], "--data", data, "--temperature", temperature, "--neg-number", "3",
                 "--seed", "4", "-o", out)
    assert result.exit_code == 0, result.output
    expected = mix_models_with_data(dense_models[:2], retrieval_examples, tmp_path / "core", temperature=temperature,
                                    neg_number=3, seed=4)
    record = read_record(out)
    assert record["method"] == "data" and record["temperature"] == temperature and record["examples"] == 5
    assert record["weights"] == pytest.approx(expected.weights, abs=1e-9)
    assert record["losses"] == pytest.approx(expected.losses, abs=1e-9)
    for weight, loss in zip(expected.weights, expected.losses):
        assert f"{weight:.6f}" in result.stdout and f"{loss:.6f}" in result.stdout
