from __future__ import annotations

import pytest
from haystack.dataclasses import SparseEmbedding
from haystack.utils import ComponentDevice

from bge_core import Embedder
from bge_core.sparse import EMPTY_PLACEHOLDER_WEIGHT
from haystack_integrations.components.embedders.bge import BGESparseTextEmbedder, BGETextEmbedder
from tests.haystack.conftest import TOKEN_DICT

TYPE = "haystack_integrations.components.embedders.bge.bge_sparse_text_embedder.BGESparseTextEmbedder"


def test_to_dict_defaults():
    assert BGESparseTextEmbedder().to_dict() == {
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
            "truncate": True,
            "progress_bar": False,
        },
    }


def test_to_dict_from_dict_with_parameters(m3_path, cpu):
    data = BGESparseTextEmbedder(
        m3_path, device=cpu, token=None, prefix="", suffix="?", dtype="fp16", max_length=16, batch_tokens=256,
        truncate=False, progress_bar=True,
    ).to_dict()
    assert data == {
        "type": TYPE,
        "init_parameters": {
            "model": m3_path, "device": {"type": "single", "device": "cpu"}, "token": None, "prefix": "",
            "suffix": "?", "dtype": "fp16", "max_length": 16, "batch_tokens": 256, "truncate": False,
            "progress_bar": True,
        },
    }
    assert BGESparseTextEmbedder.from_dict(data).to_dict() == data


def test_sparse_embedding_is_the_core_lexical_weights(m3_path, cpu):
    out = BGESparseTextEmbedder(m3_path, device=cpu).run(text="Which bear eats bamboo?")["sparse_embedding"]
    weights = Embedder(m3_path, device="cpu").encode_queries(["Which bear eats bamboo?"], sparse=True)
    expected = weights.lexical_weights[0]
    assert isinstance(out, SparseEmbedding)
    assert expected  # the premise: this text has lexical weights
    assert out.indices == sorted(expected)
    assert out.values == pytest.approx([expected[i] for i in sorted(expected)])
    assert all(isinstance(i, int) for i in out.indices) and all(isinstance(v, float) and v > 0 for v in out.values)


def test_empty_query_gives_the_storable_placeholder(m3_path, cpu):
    out = BGESparseTextEmbedder(m3_path, device=cpu).run("")["sparse_embedding"]
    assert out.indices == [Embedder(m3_path, device="cpu").pad_token_id]
    assert out.values == [EMPTY_PLACEHOLDER_WEIGHT]


def test_dense_and_sparse_query_cost_one_forward(m3_path, cpu, fresh):
    dense, sparse = BGETextEmbedder(m3_path, device=cpu), BGESparseTextEmbedder(m3_path, device=cpu)
    dense.warm_up()
    sparse.warm_up()
    assert dense._embedder.loaded is sparse._embedder.loaded
    engine = dense._embedder.loaded.engine
    before = engine.rows_forwarded
    dense.run(f"query {fresh}")
    sparse.run(f"query {fresh}")
    assert engine.rows_forwarded - before == 1


def test_a_dense_model_is_refused(dense_path, cpu):
    with pytest.raises(ValueError, match="need BGE-M3"):
        BGESparseTextEmbedder(dense_path, device=cpu).warm_up()


@pytest.mark.parametrize("bad", [None, 1.5, ["x"]])
def test_wrong_input_type(m3_path, cpu, bad):
    with pytest.raises(TypeError, match="BGESparseTextEmbedder expects a string"):
        BGESparseTextEmbedder(m3_path, device=cpu).run(bad)


def test_warm_up_twice_keeps_the_core_object(m3_path, cpu):
    embedder = BGESparseTextEmbedder(m3_path, device=cpu)
    embedder.warm_up()
    first = embedder._embedder
    embedder.warm_up()
    assert embedder._embedder is first


async def test_run_async_matches_run(m3_path, cpu):
    embedder = BGESparseTextEmbedder(m3_path, device=cpu)
    assert await embedder.run_async(text="async") == embedder.run(text="async")
