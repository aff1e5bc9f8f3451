"""Parity of the three BGE LLM rerankers with FlagEmbedding 1.4.2 (CPU, fp32, |Δ| ≤ 1e-4).

FlagLLMReranker runs unmodified. FlagEmbedding's bundled LayerWiseMiniCPM / CostWiseGemma models
do not run on transformers 5 (list-valued `_tied_weights_keys`, rope_scaling normalised to a dict,
RoPE buffers left uninitialised by meta-device loading, Gemma2 decoder layers that now need
`position_embeddings`), so `fe_compat` patches exactly those points, in the spirit of the
transformers 4.46 FlagEmbedding targets; everything FlagEmbedding-specific (tokenisation, sorting,
cutoff layers, heads, token compression, pooling) runs as shipped.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import bge_core
from tests.fixtures import llm_rerankers as fixtures

FE = pytest.importorskip("FlagEmbedding")
TOL = 1e-4

PAIRS = [
    ("what is panda?", "The giant panda is a bear species endemic to China."),
    ("what is panda?", "Pandas eat bamboo. " * 12),
    ("how tall is the Eiffel tower?", "The Eiffel Tower is 330 metres tall and stands in Paris."),
    ("熊猫吃什么？", "大熊猫是中国特有的熊科动物。大熊猫主要吃竹子。"),
    ("Где живёт панда?", "Большая панда — вид медведей, обитающий в Китае."),
    ("パンダはどこ？", "パンダは中国に生息するクマの一種です。🐼🎉"),
    ("emoji 🐼🚀 query", ""),
    ("", "A passage for an empty query."),
    ("query " * 40, "Der schnelle braune Fuchs springt über den faulen Hund."),
    ("مرحبا", "الباندا العملاقة حيوان يعيش في الصين. القاهرة عاصمة مصر."),
]


# --------------------------------------------------------------------- FlagEmbedding on transformers 5


@pytest.fixture(scope="session")
def fe_compat() -> Iterator[None]:
    """Let FlagEmbedding's bundled layerwise / lightweight models run on transformers 5."""
    from FlagEmbedding.inference.reranker.decoder_only.models import gemma_model, modeling_minicpm_reranker
    from transformers.models.gemma2.modeling_gemma2 import Gemma2DecoderLayer, Gemma2RotaryEmbedding

    minicpm_cls, gemma_cls = modeling_minicpm_reranker.LayerWiseMiniCPMForCausalLM, gemma_model.CostWiseGemmaForCausalLM
    original_init_rope = modeling_minicpm_reranker.MiniCPMAttention._init_rope

    def init_rope(self: Any) -> None:
        scaling = self.config.rope_scaling
        if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "default":
            self.config.rope_scaling = None
        original_init_rope(self)

    class Gemma2Layer446(Gemma2DecoderLayer):
        """transformers 4.46's Gemma2DecoderLayer call: builds RoPE itself, slides on even layers,
        SDPA attention (no attention soft-capping) unless the config asks for eager."""

        def __init__(self, config: Any, layer_idx: int) -> None:
            super().__init__(config, layer_idx)
            self.is_sliding, self.window = layer_idx % 2 == 0, config.sliding_window
            self.cap = config.attn_logit_softcapping
            self.rotary = Gemma2RotaryEmbedding(config)

        def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    position_ids: torch.Tensor | None = None, **_: Any) -> tuple[torch.Tensor]:
            if self.is_sliding and attention_mask is not None:
                far = torch.tril(torch.ones_like(attention_mask, dtype=torch.bool), diagonal=-self.window)
                attention_mask = torch.where(far, torch.finfo(hidden_states.dtype).min, attention_mask)
            self.self_attn.attn_logit_softcapping = self.cap if self.config._attn_implementation == "eager" else None
            rope = self.rotary(hidden_states, position_ids)
            return (super().forward(hidden_states, position_embeddings=rope, attention_mask=attention_mask,
                                    position_ids=position_ids),)

    def rebuild_rope(model: Any) -> None:
        for module in model.modules():  # non-persistent buffers stay uninitialised on transformers 5
            if isinstance(module, modeling_minicpm_reranker.MiniCPMRotaryEmbedding):
                module.inv_freq = 1.0 / (module.base ** (torch.arange(0, module.dim, 2).float() / module.dim))
                module._set_cos_sin_cache(module.max_position_embeddings, module.inv_freq.device, torch.float32)
            if isinstance(module, Gemma2Layer446):
                module.rotary = Gemma2RotaryEmbedding(model.config)

    def loader(original: Any) -> classmethod:
        def from_pretrained(cls: type, *args: Any, **kwargs: Any) -> Any:
            out = original.__func__(cls, *args, **kwargs)
            rebuild_rope(out[0] if isinstance(out, tuple) else out)
            return out

        return classmethod(from_pretrained)

    patch = pytest.MonkeyPatch()
    for cls in (minicpm_cls, gemma_cls):
        patch.setattr(cls, "_tied_weights_keys", None)
        patch.setattr(cls, "from_pretrained", loader(cls.from_pretrained))
    patch.setattr(modeling_minicpm_reranker.MiniCPMAttention, "_init_rope", init_rope)
    patch.setattr(gemma_model, "Gemma2DecoderLayer", Gemma2Layer446)
    yield
    patch.undo()


# --------------------------------------------------------------------- checkpoints and oracles


@pytest.fixture(scope="session")
def llm_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("llm-rerankers")
    return {
        "gemma": fixtures.build_gemma_reranker(root / "gemma"),
        "gemma2-nobos": fixtures.build_gemma_reranker(root / "gemma2", arch="gemma2", with_bos=False),
        "gemma-lefttrunc": fixtures.build_gemma_reranker(root / "gemma-lt", truncation_side="left", seed=3),
        "layerwise": fixtures.build_layerwise_reranker(root / "layerwise"),
        "lightweight": fixtures.build_lightweight_reranker(root / "lightweight"),
        "lightweight-eager-sliding": fixtures.build_lightweight_reranker(
            root / "lightweight-es", sliding_window=8, eager=True, seed=4
        ),
    }


@pytest.fixture(scope="session")
def oracle(llm_checkpoints: dict[str, str], fe_compat: None) -> Any:
    cache: dict[str, Any] = {}

    def get(kind: str) -> Any:
        if kind not in cache:
            from FlagEmbedding import FlagLLMReranker, LayerWiseFlagLLMReranker, LightWeightFlagLLMReranker

            cls = LayerWiseFlagLLMReranker if kind == "layerwise" else (
                LightWeightFlagLLMReranker if kind.startswith("lightweight") else FlagLLMReranker
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[kind] = cls(llm_checkpoints[kind], devices="cpu", batch_size=4)
        return cache[kind]

    return get


def compare(oracle: Any, paths: dict[str, str], kind: str, **kwargs: Any) -> float:
    expected = np.asarray(oracle(kind).compute_score(list(PAIRS), **kwargs), dtype=np.float64)
    got = bge_core.Reranker(paths[kind], device="cpu").score(PAIRS, **kwargs)
    assert got.shape == expected.shape
    assert np.all(np.isfinite(got))
    delta = float(np.abs(got - expected).max())
    assert delta <= TOL, f"{kind} {kwargs}: max |Δ| = {delta}"
    return delta


# --------------------------------------------------------------------- parity


@pytest.mark.parametrize("kind", ["gemma", "gemma2-nobos", "gemma-lefttrunc"])
@pytest.mark.parametrize(
    "case",
    [{}, {"max_length": 24, "normalize": True}, {"max_length": 40, "query_max_length": 6}],
    ids=["defaults", "short-normalized", "short-query"],
)
def test_llm_reranker_parity(oracle: Any, llm_checkpoints: dict[str, str], kind: str, case: dict[str, Any]) -> None:
    compare(oracle, llm_checkpoints, kind, **case)


def test_llm_reranker_custom_prompt(oracle: Any, llm_checkpoints: dict[str, str]) -> None:
    compare(oracle, llm_checkpoints, "gemma", prompt="Is passage B relevant to query A? Yes or No.")


def test_llm_reranker_packed_path(oracle: Any, llm_checkpoints: dict[str, str]) -> None:
    """The padding-free path (CUDA's default; forced here on CPU) gives FlagEmbedding's scores too."""
    expected = np.asarray(oracle("gemma").compute_score(list(PAIRS), max_length=40))
    rr = bge_core.Reranker(llm_checkpoints["gemma"], device="cpu", packed=True)
    assert rr.loaded.engine.packed
    np.testing.assert_allclose(rr.score(PAIRS, max_length=40), expected, atol=TOL, rtol=0)


# cutoff layers as FlagEmbedding takes them: default (last), several, one, unsorted (heads follow the request)
@pytest.mark.parametrize("cutoff_layers", [None, [1, 2, 3, 4], [2], [3, 1]])
def test_layerwise_parity(oracle: Any, llm_checkpoints: dict[str, str], cutoff_layers: list[int] | None) -> None:
    compare(oracle, llm_checkpoints, "layerwise", cutoff_layers=cutoff_layers)
    compare(oracle, llm_checkpoints, "layerwise", cutoff_layers=cutoff_layers, normalize=True, max_length=20)


@pytest.mark.parametrize(
    ("kind", "case"),
    [
        ("lightweight", {}),
        ("lightweight", {"cutoff_layers": [1, 2, 3, 4], "normalize": True}),
        ("lightweight", {"cutoff_layers": [2, 4], "compress_ratio": 2, "compress_layers": [1, 3]}),
        ("lightweight", {"compress_ratio": 3, "compress_layers": [2], "max_length": 30, "normalize": True}),
        ("lightweight", {"cutoff_layers": [3], "compress_ratio": 2}),  # default compress layer 8: no effect
        ("lightweight", {"cutoff_layers": [2, 3], "compress_ratio": 2, "compress_layers": [2, 3]}),
        ("lightweight-eager-sliding", {"cutoff_layers": [1, 2, 3, 4]}),
        ("lightweight-eager-sliding", {"compress_ratio": 2, "compress_layers": [1, 2], "max_length": 30}),
    ],
)
def test_lightweight_parity(oracle: Any, llm_checkpoints: dict[str, str], kind: str, case: dict[str, Any]) -> None:
    compare(oracle, llm_checkpoints, kind, **case)


def test_compression_changes_scores(llm_checkpoints: dict[str, str]) -> None:
    rr = bge_core.Reranker(llm_checkpoints["lightweight"], device="cpu")
    plain = rr.score(PAIRS[:2], cutoff_layers=[4])
    squeezed = rr.score(PAIRS[:2], cutoff_layers=[4], compress_ratio=2, compress_layers=[2])
    assert np.abs(plain - squeezed).max() > 1e-3


# --------------------------------------------------------------------- contract details


@pytest.mark.parametrize("kind", ["gemma", "layerwise", "lightweight"])
def test_truncate_false_raises_only_when_cut(llm_checkpoints: dict[str, str], kind: str) -> None:
    rr = bge_core.Reranker(llm_checkpoints[kind], device="cpu")
    rr.score(PAIRS[:1], truncate=False)
    with pytest.raises(ValueError, match="exceed max_length"):
        rr.score([PAIRS[1]], truncate=False, max_length=16)
    with pytest.raises(ValueError, match="exceed max_length"):
        rr.score([("query " * 40, "p")], truncate=False, max_length=48)  # the query alone: over 3/4 of 48


def test_gemma_head_reads_only_the_yes_row(llm_checkpoints: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    rr = bge_core.Reranker(llm_checkpoints["gemma"], device="cpu")

    def full_vocabulary(*_: Any, **__: Any) -> None:
        raise AssertionError("full-vocabulary logits computed")

    monkeypatch.setattr(rr.loaded.family.model.lm_head, "forward", full_vocabulary)
    assert rr.score(PAIRS[:3]).shape == (3,)


def test_out_of_range_cutoff_layers(llm_checkpoints: dict[str, str]) -> None:
    rr = bge_core.Reranker(llm_checkpoints["layerwise"], device="cpu")
    assert rr.score(PAIRS[:2], cutoff_layers=[0, 3, 9]).shape == (2,)  # dropped, as FlagEmbedding
    with pytest.raises(ValueError, match="cutoff_layers"):
        rr.score(PAIRS[:2], cutoff_layers=[9])
