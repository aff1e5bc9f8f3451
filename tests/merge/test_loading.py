"""A merged directory loads like its inputs: in bge_core, FlagEmbedding 1.4.2 and sentence-transformers."""

from __future__ import annotations

import json
import os
import random

import FlagEmbedding as FE
import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, BertModel

from bge_core import Embedder, Reranker
from bge_core.merge import mix_models, mix_models_with_data
from tests.merge.conftest import CORPUS

TOL = 1e-4
TEXTS = CORPUS[:8]


def test_dense_merge_loads_in_core_flagembedding_and_sentence_transformers(dense_models, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = mix_models(dense_models[:2], [0.4, 0.6], tmp_path / "out").output_path
    ours = Embedder(out, device="cpu").encode(TEXTS).dense
    flag = FE.FlagModel(out, devices="cpu", use_fp16=False).encode(TEXTS)
    st = SentenceTransformer(out, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(ours, flag, atol=TOL)
    np.testing.assert_allclose(st, ours, atol=TOL)  # CLS pooling + normalize, as BGE
    before = Embedder(dense_models[0], device="cpu").encode(TEXTS).dense
    assert np.abs(before - ours).max() > 1e-2  # really a different model
    with open(os.path.join(out, "merge_weights.json"), encoding="utf-8") as fh:
        record = json.load(fh)
    assert record["weights"] == [0.4, 0.6] and record["models"] == dense_models[:2]
    assert record["method"] == "weights" and record["model_type"] == "encoder"


def test_m3_merge_loads_in_core_and_flagembedding(m3_models, tmp_path):
    out = mix_models(m3_models, [0.5, 0.5], tmp_path / "out").output_path
    mine = Embedder(out, device="cpu").encode(TEXTS, dense=True, sparse=True, colbert=True)
    flag = FE.BGEM3FlagModel(out, devices="cpu", use_fp16=False).encode(
        TEXTS, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    np.testing.assert_allclose(mine.dense, flag["dense_vecs"], atol=TOL)
    for a, b in zip(mine.colbert_vectors, flag["colbert_vecs"], strict=True):
        np.testing.assert_allclose(a, b, atol=TOL)
    for a, b in zip(mine.lexical_weights, flag["lexical_weights"], strict=True):
        assert {str(k) for k in a} == set(b)
        assert all(abs(a[k] - b[str(k)]) <= TOL for k in a)


def test_reranker_merge_loads_in_core_and_flagembedding(reranker_models, tmp_path):
    out = mix_models(reranker_models, [0.7, 0.3], tmp_path / "out").output_path
    assert not os.path.exists(os.path.join(out, "modules.json"))  # only encoders get a sentence-transformers config
    pairs = [(CORPUS[i], CORPUS[j]) for i in range(4) for j in range(4)]
    ours = Reranker(out, device="cpu").score(pairs)
    flag = FE.FlagReranker(out, devices="cpu", use_fp16=False).compute_score(pairs)
    np.testing.assert_allclose(ours, flag, atol=TOL)
    assert np.std(ours) > 1e-3


def test_decoder_merge_loads_in_transformers_and_core(decoder_models, tmp_path):
    out = mix_models(decoder_models, [0.5, 0.5], tmp_path / "out").output_path
    model = AutoModelForCausalLM.from_pretrained(out)
    a = load_file(os.path.join(decoder_models[0], "model.safetensors"))
    b = load_file(os.path.join(decoder_models[1], "model.safetensors"))
    name = "model.embed_tokens.weight"
    assert torch.allclose(model.state_dict()[name], (a[name] + b[name]) / 2, atol=1e-6)
    scores = Reranker(out, device="cpu").score([("what is panda?", "The giant panda is a bear.")])
    assert np.isfinite(scores).all()


def test_sharded_checkpoints_merge_like_single_files(dense_models, tmp_path):
    sharded = []
    for i, path in enumerate(dense_models[:2]):
        target = tmp_path / f"sharded{i}"
        BertModel.from_pretrained(path).save_pretrained(target, max_shard_size="40KB")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (target / name).write_bytes((open(os.path.join(path, name), "rb")).read())
        assert (target / "model.safetensors.index.json").exists()
        sharded.append(str(target))
    out = mix_models(sharded, [0.3, 0.7], tmp_path / "out").output_path
    single = mix_models(dense_models[:2], [0.3, 0.7], tmp_path / "single").output_path
    with open(os.path.join(out, "model.safetensors.index.json"), encoding="utf-8") as fh:
        shards = sorted(set(json.load(fh)["weight_map"].values()))
    assert len(shards) > 1
    merged = {k: v for shard in shards for k, v in load_file(os.path.join(out, shard)).items()}
    reference = load_file(os.path.join(single, "model.safetensors"))
    assert merged.keys() == reference.keys()
    assert all(torch.equal(merged[k], reference[k]) for k in merged)
    assert AutoModel.from_pretrained(out) is not None
    np.testing.assert_allclose(Embedder(out, device="cpu").encode(TEXTS).dense,
                               Embedder(single, device="cpu").encode(TEXTS).dense, atol=1e-6)


def test_half_precision_is_kept_and_summed_in_float32(dense_models, tmp_path):
    halves = []
    for i, path in enumerate(dense_models[:2]):
        target = tmp_path / f"bf16-{i}"
        BertModel.from_pretrained(path, dtype=torch.bfloat16).save_pretrained(target)
        halves.append(str(target))
    out = mix_models(halves, [0.3, 0.7], tmp_path / "out").output_path
    merged = load_file(os.path.join(out, "model.safetensors"))
    inputs = [load_file(os.path.join(p, "model.safetensors")) for p in halves]
    for name, tensor in merged.items():
        assert tensor.dtype == torch.bfloat16
        exact = 0.3 * inputs[0][name].double() + 0.7 * inputs[1][name].double()
        # summed in float32 and rounded to bfloat16 once: within half a bfloat16 step of the exact sum
        # (plus float32 rounding, relative to the terms, where they cancel)
        terms = 0.3 * inputs[0][name].double().abs() + 0.7 * inputs[1][name].double().abs()
        assert ((tensor.double() - exact).abs() <= exact.abs() * 2**-8 + terms * 2**-22).all(), name


def test_reranker_data_weights_match_the_defined_loss_by_hand(reranker_models, retrieval_examples, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    neg_number, batch_size, temperature, seed = 3, 2, 0.5, 5
    result = mix_models_with_data(reranker_models, retrieval_examples, tmp_path / "out", temperature=temperature,
                                  batch_size=batch_size, neg_number=neg_number, seed=seed)
    assert result.model_type == "reranker"
    rng = random.Random(seed)
    groups = [[e["pos"][0], *rng.sample(e["neg"], neg_number)] for e in retrieval_examples]
    tokenizer = AutoTokenizer.from_pretrained(reranker_models[0])
    losses = []
    for path in reranker_models:
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        per_example = []
        with torch.no_grad():
            for example, group in zip(retrieval_examples, groups):
                # one pair at a time (no padding): the positive's cross-entropy within its group
                scores = torch.stack([model(**tokenizer(example["query"], p, return_tensors="pt")).logits[0, 0]
                                      for p in group])
                per_example.append(-torch.log_softmax(scores.double(), 0)[0].item())
        batches = [per_example[i:i + batch_size] for i in range(0, len(per_example), batch_size)]
        losses.append(float(np.mean([np.mean(b) for b in batches])))
    expected = np.exp(-np.array(losses) / temperature)
    expected /= expected.sum()
    np.testing.assert_allclose(result.losses, losses, atol=1e-4)
    np.testing.assert_allclose(result.weights, expected, atol=1e-4)
    assert abs(result.weights[0] - result.weights[1]) > 1e-3
