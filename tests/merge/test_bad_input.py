"""Bad input to a merge: one clear error, and nothing at the output path (no half-written model)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from transformers import BertConfig, BertModel

from bge_core.errors import ModelLoadError
from bge_core.merge import MergeError, mix_models, mix_models_with_data
from tests.cli.conftest import assert_error_line, bge, write_jsonl


def assert_nothing_written(out) -> None:
    assert not os.path.exists(out)
    leftovers = [n for n in os.listdir(os.path.dirname(out)) if n.startswith(f".{os.path.basename(out)}.")]
    assert not leftovers, leftovers


@pytest.fixture
def out(tmp_path):
    return str(tmp_path / "merged")


def _variant(tmp_path, source: str, name: str, **config_changes) -> str:
    """A copy of `source` whose model is rebuilt with a changed config (same model_type and architectures)."""
    target = tmp_path / name
    config = BertConfig.from_pretrained(source)
    for key, value in config_changes.items():
        setattr(config, key, value)
    BertModel(config).save_pretrained(target)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(source, file), target / file)
    return str(target)


@pytest.mark.parametrize("weights, message", [
    ([1.0], "at least two models"),
    ([0.2, 0.3, 0.5], "3 weights for 2 models"),
    ([0.5, float("nan")], "weight 2 is nan"),
    ([float("inf"), 0.5], "weight 1 is inf"),
    ([0.3, 0.6], "sum to 0.9"),
    ([0.5, 0.500002], "not 1"),
])
def test_bad_weights(dense_models, out, weights, message):
    models = dense_models[:1] if message == "at least two models" else dense_models[:2]
    with pytest.raises(MergeError, match=message):
        mix_models(models, weights, out)
    assert_nothing_written(out)


def test_weights_within_tolerance_and_negative_weights_are_accepted(dense_models, tmp_path):
    assert mix_models(dense_models[:2], [0.3, 0.7 + 5e-7], tmp_path / "a").weights[1] == 0.7 + 5e-7
    assert mix_models(dense_models[:2], [1.5, -0.5], tmp_path / "b").weights == [1.5, -0.5]  # extrapolation


def test_missing_model_directory(dense_models, out, tmp_path):
    with pytest.raises(ModelLoadError, match="no-such-model"):
        mix_models([dense_models[0], str(tmp_path / "no-such-model")], [0.5, 0.5], out)
    assert_nothing_written(out)


def test_missing_and_damaged_weight_files(dense_models, out, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dense_models[1], broken)
    os.remove(broken / "model.safetensors")
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        mix_models([dense_models[0], str(broken)], [0.5, 0.5], out)
    data = open(os.path.join(dense_models[1], "model.safetensors"), "rb").read()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])  # an interrupted download
    with pytest.raises(ModelLoadError, match="model.safetensors: damaged"):
        mix_models([dense_models[0], str(broken)], [0.5, 0.5], out)
    assert_nothing_written(out)


def test_different_architectures(dense_models, m3_models, reranker_models, out):
    with pytest.raises(MergeError, match="different architectures: .* has model_type 'bert'"):
        mix_models([dense_models[0], m3_models[0]], [0.5, 0.5], out)
    with pytest.raises(MergeError, match="architectures"):
        mix_models([m3_models[0], reranker_models[0]], [0.5, 0.5], out)
    assert_nothing_written(out)


def test_different_tensors_shapes_and_dtypes_name_the_first_one(dense_models, out, tmp_path):
    wider = _variant(tmp_path, dense_models[1], "wider", intermediate_size=128)
    with pytest.raises(MergeError, match=r"tensor encoder\.layer\.0\.intermediate\.dense\.bias: shape \[64\]"):
        mix_models([dense_models[0], wider], [0.5, 0.5], out)
    deeper = _variant(tmp_path, dense_models[1], "deeper", num_hidden_layers=3)
    with pytest.raises(MergeError, match=r"tensor encoder\.layer\.2\.\S+ is in .*deeper but not in"):
        mix_models([dense_models[0], deeper], [0.5, 0.5], out)
    half = tmp_path / "half"
    BertModel.from_pretrained(dense_models[1], dtype=torch.float16).save_pretrained(half)
    with pytest.raises(MergeError, match=r"tensor embeddings\.\S+: dtype F32 in .* F16 in"):
        mix_models([dense_models[0], str(half)], [0.5, 0.5], out)
    assert_nothing_written(out)


def test_m3_head_missing_from_one_model(m3_models, out, tmp_path):
    headless = tmp_path / "headless"
    shutil.copytree(m3_models[1], headless)
    os.remove(headless / "sparse_linear.pt")
    with pytest.raises(MergeError, match="sparse_linear.pt is in .* but not in .*headless"):
        mix_models([m3_models[0], str(headless)], [0.5, 0.5], out)
    assert_nothing_written(out)


def test_output_not_empty_needs_overwrite(dense_models, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MergeError, match="not empty"):
        mix_models(dense_models[:2], [0.5, 0.5], out)
    assert os.listdir(out) == ["keep.txt"]
    mix_models(dense_models[:2], [0.5, 0.5], out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    (tmp_path / "empty").mkdir()
    assert mix_models(dense_models[:2], [0.5, 0.5], tmp_path / "empty").output_path == str(tmp_path / "empty")


def test_other_weight_formats_of_the_first_model_are_not_copied(dense_models, tmp_path):
    first = tmp_path / "first"
    shutil.copytree(dense_models[0], first)
    (first / "onnx").mkdir()
    (first / "onnx" / "model.onnx").write_bytes(b"not merged")
    (first / "pytorch_model.bin").write_bytes(b"not merged")
    (first / "README.md").write_text("card")
    result = mix_models([str(first), dense_models[1]], [0.5, 0.5], tmp_path / "out")
    assert sorted(result.skipped_files) == ["onnx/", "pytorch_model.bin"]
    assert sorted(os.listdir(result.output_path)) == sorted([
        "1_Pooling", "2_Normalize", "README.md", "config.json", "merge_weights.json", "model.safetensors",
        "modules.json", "sentence_bert_config.json", "tokenizer.json", "tokenizer_config.json"])


def test_integer_tensors_are_copied_from_the_first_model(dense_models, tmp_path):
    from safetensors.torch import load_file, save_file

    variants = []
    for i, path in enumerate(dense_models[:2]):
        target = tmp_path / f"int{i}"
        shutil.copytree(path, target)
        tensors = load_file(target / "model.safetensors")
        tensors["embeddings.position_ids"] = torch.arange(8).unsqueeze(0) + i  # differ: a warning, first kept
        save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
        variants.append(str(target))
    with pytest.warns(UserWarning, match="embeddings.position_ids: integer tensor differs"):
        out = mix_models(variants, [0.5, 0.5], tmp_path / "out").output_path
    merged = load_file(os.path.join(out, "model.safetensors"))["embeddings.position_ids"]
    assert merged.dtype == torch.int64 and torch.equal(merged, torch.arange(8).unsqueeze(0))


def test_bad_examples_and_temperature(dense_models, decoder_models, retrieval_examples, out):
    short = [dict(retrieval_examples[0]), {**retrieval_examples[1], "neg": ["only one"]}]
    with pytest.raises(MergeError, match="example 2: 1 negatives"):
        mix_models_with_data(dense_models[:2], short, out, neg_number=3)
    with pytest.raises(MergeError, match='example 1: "query" must be a string'):
        mix_models_with_data(dense_models[:2], [{"input": "x", "output": "y"}], out)
    with pytest.raises(MergeError, match='example 1: "output" must be a string'):
        mix_models_with_data(decoder_models, [{"input": "x"}], out)
    with pytest.raises(MergeError, match="temperature must be"):
        mix_models_with_data(dense_models[:2], retrieval_examples, out, temperature=0)
    with pytest.raises(MergeError, match="no examples"):
        mix_models_with_data(dense_models[:2], [], out)
    with pytest.raises(MergeError, match="at least two models"):
        mix_models_with_data(dense_models[:1], retrieval_examples, out)
    assert_nothing_written(out)


# ---- the command line: exit status 1, one "Error:" line, nothing written ----

@pytest.mark.parametrize("args, fragments", [
    (["--weights", "0.5"], ["1 weights for 2 models"]),
    (["--weights", "0.5,abc"], ["weight 2", "'abc'", "not a number"]),
    (["--weights", "0.5,nan"], ["weight 2 is nan"]),
    (["--weights", "0.3,0.6"], ["sum to 0.9"]),
])
def test_cli_bad_weights(dense_models, out, args, fragments):
    assert_error_line(bge("merge", *dense_models[:2], "-o", out, *args), *fragments)
    assert_nothing_written(out)


def test_cli_bad_models_and_data(dense_models, m3_models, retrieval_examples, out, tmp_path):
    assert_error_line(bge("merge", dense_models[0], "-o", out, "--weights", "1"), "at least two models")
    assert_error_line(bge("merge", dense_models[0], str(tmp_path / "gone"), "-o", out, "--weights", "0.5,0.5"),
                      "gone")
    assert_error_line(bge("merge", dense_models[0], m3_models[0], "-o", out, "--weights", "0.5,0.5"),
                      "different architectures")
    data = write_jsonl(tmp_path / "ex.jsonl", [retrieval_examples[0], {"query": "q", "pos": [], "neg": ["n"] * 7}])
    three = ("--neg-number", "3")
    assert_error_line(bge("merge", *dense_models[:2], "-o", out, "--data", data, *three), "ex.jsonl:2",
                      '"pos" is empty')
    (tmp_path / "bad.jsonl").write_text(json.dumps(retrieval_examples[0]) + "\n{oops\n", encoding="utf-8")
    assert_error_line(bge("merge", *dense_models[:2], "-o", out, "--data", tmp_path / "bad.jsonl", *three),
                      "bad.jsonl:2", "invalid JSON")
    assert_error_line(bge("merge", *dense_models[:2], "-o", out, "--data", tmp_path / "none.jsonl"),
                      "none.jsonl", "no such file")
    assert_nothing_written(out)


def test_cli_needs_exactly_one_of_weights_and_data(dense_models, out, tmp_path):
    assert bge("merge", *dense_models[:2], "-o", out).exit_code == 2
    both = bge("merge", *dense_models[:2], "-o", out, "--weights", "0.5,0.5", "--data", tmp_path / "x.jsonl")
    assert both.exit_code == 2 and "exactly one of --weights and --data" in both.stderr
    assert_nothing_written(out)
