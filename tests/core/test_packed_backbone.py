"""`PackedBertBackbone`: the checkpoint's encoder weights without transformers' model classes, for the fused
encoder. On CPU in fp32 its fused forward must equal transformers' on the same packed tokens; loading must
take exactly the checkpoint's tensors (or hand the checkpoint back to transformers); and importing the
library must not import transformers' model stack (the seconds it saves are the point)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from bge_core import Embedder
from bge_core.families.dense import load_backbone
from bge_core.models.bert import EncoderConfig, PackedBertBackbone, fits_packed_backbone, load_packed_backbone
from bge_core.models.encoder import FusedEncoder


def _engine(path: str):
    return Embedder(path, device="cpu", packed=True, reuse_outputs=False).loaded.engine


@pytest.mark.parametrize("family", ["dense", "m3"])
def test_fused_forward_of_the_own_backbone_equals_transformers(family, request, parity_texts, monkeypatch):
    monkeypatch.setenv("BGE_CORE_COMPILE", "0")
    path = request.getfixturevalue(f"{family}_path")
    engine = _engine(path)
    reference = engine.family.backbone_module()  # the transformers model (CPU keeps it)
    own = load_packed_backbone(path, torch.device("cpu"), torch.float32)
    assert isinstance(own, PackedBertBackbone)
    assert sum(p.numel() for p in own.parameters()) == sum(
        p.numel() for name, p in reference.named_parameters() if not name.startswith("pooler."))
    with torch.inference_mode():
        batch = engine._pack(engine.tokenize(parity_texts, 64, {}))
        expected = engine.family.backbone_packed(batch)  # transformers on packed attention
        got = FusedEncoder(own)(batch)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def _copy_checkpoint(src: str, dst: str, edit) -> str:
    shutil.copytree(src, dst)
    file = os.path.join(dst, "model.safetensors")
    save_file(edit(load_file(file)), file)
    return dst


def test_a_checkpoint_saved_under_the_base_model_prefix_loads(dense_path, tmp_path):
    """Saved from a model with a head (``bert.`` + an MLM head): the encoder is found, the head left out."""
    def prefixed(state):
        out = {f"bert.{k}": v for k, v in state.items()}
        out["cls.predictions.bias"] = torch.zeros(3)
        return out

    path = _copy_checkpoint(dense_path, str(tmp_path / "prefixed"), prefixed)
    own = load_packed_backbone(path, torch.device("cpu"), torch.float32)
    plain = load_packed_backbone(dense_path, torch.device("cpu"), torch.float32)
    assert own is not None and plain is not None
    for (name, a), (_, b) in zip(own.state_dict().items(), plain.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_checkpoints_it_cannot_hold_go_back_to_transformers(dense_path, tmp_path):
    cpu, fp32 = torch.device("cpu"), torch.float32
    missing = _copy_checkpoint(dense_path, str(tmp_path / "missing"),
                               lambda s: {k: v for k, v in s.items() if "layer.0.output.dense" not in k})
    assert load_packed_backbone(missing, cpu, fp32) is None
    reshaped = _copy_checkpoint(dense_path, str(tmp_path / "reshaped"), lambda s: {
        k: (v[:-1] if k.endswith("layer.1.intermediate.dense.bias") else v) for k, v in s.items()})
    assert load_packed_backbone(reshaped, cpu, fp32) is None
    for name, change in [("relu", {"hidden_act": "relu"}), ("relative", {"position_embedding_type": "relative_key"}),
                         ("decoder", {"is_decoder": True}), ("cross-attention", {"add_cross_attention": True}),
                         ("default-eps", {"layer_norm_eps": None})]:
        changed = _copy_checkpoint(dense_path, str(tmp_path / name), lambda s: s)
        with open(os.path.join(changed, "config.json")) as fh:
            raw = json.load(fh)
        raw.update(change)
        with open(os.path.join(changed, "config.json"), "w") as fh:
            json.dump({k: v for k, v in raw.items() if v is not None}, fh)
        assert load_packed_backbone(changed, cpu, fp32) is None, name
    # Off CUDA (or unpacked, or in fp32) the transformers model is loaded: it runs padded batches.
    _, model = load_backbone(dense_path, cpu, fp32, packed=True)
    assert type(model).__name__ == "BertModel"


@pytest.mark.parametrize("family", ["dense", "m3"])
def test_the_config_reads_as_transformers_reads_it(family, request):
    path = request.getfixturevalue(f"{family}_path")
    ours, theirs = EncoderConfig.read(path), AutoConfig.from_pretrained(path)
    assert fits_packed_backbone(ours) and fits_packed_backbone(theirs)
    for field in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                  "pad_token_id", "is_decoder", "add_cross_attention"):
        assert getattr(ours, field) == getattr(theirs, field), field


def test_the_own_backbone_has_no_padded_forward(dense_path):
    own = load_packed_backbone(dense_path, torch.device("cpu"), torch.float32)
    with pytest.raises(TypeError, match="fused packed encoder"):
        own(input_ids=torch.zeros(1, 3, dtype=torch.long))


def test_importing_the_library_does_not_import_transformers_models(tmp_path):
    """Every one-shot command pays its imports: the core, the evaluation package and the rerankers' module
    may import transformers' tokenizers and configs, never its model stack."""
    code = (
        "import sys, json\n"
        "from bge_core import Embedder, Reranker\n"
        "import bge_eval, bge_eval.runner, bge_eval.search\n"
        "import bge_core.engine.runner, bge_core.families.m3, bge_core.families.cross_encoder\n"
        "heavy = ['transformers.modeling_utils', 'transformers.masking_utils', 'transformers.models.auto.auto_factory',"
        " 'torch._dynamo', 'sklearn']\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.fixture(scope="module")
def bert_cross_encoder_path(tmp_path_factory) -> str:
    """A BERT-style cross-encoder (pooler, then a linear classifier), as the BGE rerankers' XLM-R ones are not."""
    from transformers import BertConfig, BertForSequenceClassification

    from tests.fixtures.checkpoints import HIDDEN, bert_tokenizer

    path = str(tmp_path_factory.mktemp("bert-ce"))
    tokenizer = bert_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=1, pad_token_id=tokenizer.pad_token_id, initializer_range=0.5)
    BertForSequenceClassification(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("layout", ["xlmr", "bert"])
def test_the_own_cross_encoder_scores_as_transformers(layout, cross_encoder_path, bert_cross_encoder_path,
                                                      parity_texts, monkeypatch):
    """Encoder, BERT's pooler and both classification heads: the packed heads of `PackedSequenceClassifier` give
    transformers' scores (fp32, CPU), and the padded transformers forward agrees."""
    from bge_core import Reranker
    from bge_core.families.cross_encoder import CrossEncoderFamily
    from bge_core.models.bert import PackedSequenceClassifier, load_packed_classifier

    monkeypatch.setenv("BGE_CORE_COMPILE", "0")
    path = cross_encoder_path if layout == "xlmr" else bert_cross_encoder_path
    reference = Reranker(path, device="cpu", packed=True)
    engine = reference.loaded.engine
    own = load_packed_classifier(path, torch.device("cpu"), torch.float32)
    assert isinstance(own, PackedSequenceClassifier)
    assert sum(p.numel() for p in own.parameters()) == sum(p.numel() for p in engine.family.model.parameters())
    family = CrossEncoderFamily(engine.family.tokenizer, own, engine.family.spec)
    family.fused_backbone = FusedEncoder(family.backbone_module())  # what the engine sets on CUDA
    pairs = [(parity_texts[0], t) for t in parity_texts] + [(parity_texts[1], "")]
    with torch.inference_mode():
        batch = engine._pack(engine.tokenize(pairs, 64, {}))
        want = engine.family.heads_packed(engine.family.backbone_packed(batch), batch, {}).host_outputs()
        got = family.heads_packed(family.backbone_packed(batch), batch, {}).host_outputs()
    np.testing.assert_allclose(got.arrays["scores"], want.arrays["scores"], atol=1e-5, rtol=1e-5)
    padded = Reranker(path, device="cpu", packed=False).score(pairs, max_length=64)  # input order, as the batch
    np.testing.assert_allclose(got.arrays["scores"][:, 0], padded, atol=1e-4, rtol=1e-4)


def test_a_checkpoint_without_a_classification_head_is_no_cross_encoder(dense_path):
    from bge_core.models.bert import load_packed_classifier

    assert load_packed_classifier(dense_path, torch.device("cpu"), torch.float32) is None
