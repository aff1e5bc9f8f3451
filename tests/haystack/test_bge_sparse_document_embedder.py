from __future__ import annotations

import copy
import warnings

import pytest
from haystack.dataclasses import Document, SparseEmbedding
from haystack.utils import ComponentDevice

from bge_core import Embedder
from bge_core.sparse import EMPTY_PLACEHOLDER_WEIGHT
from haystack_integrations.components.embedders.bge import BGEDocumentEmbedder, BGESparseDocumentEmbedder
from tests.haystack.conftest import TOKEN_DICT

TYPE = "haystack_integrations.components.embedders.bge.bge_sparse_document_embedder.BGESparseDocumentEmbedder"


def test_to_dict_defaults():
    assert BGESparseDocumentEmbedder().to_dict() == {
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
            "progress_bar": True,
            "meta_fields_to_embed": [],
            "embedding_separator": "\n",
        },
    }


def test_to_dict_from_dict_with_parameters(m3_path, cpu):
    data = BGESparseDocumentEmbedder(
        m3_path, device=cpu, token=None, prefix="p", suffix="s", dtype="fp32", max_length=20, batch_tokens=100,
        truncate=False, progress_bar=False, meta_fields_to_embed=["title"], embedding_separator=": ",
    ).to_dict()
    assert data == {
        "type": TYPE,
        "init_parameters": {
            "model": m3_path, "device": {"type": "single", "device": "cpu"}, "token": None, "prefix": "p",
            "suffix": "s", "dtype": "fp32", "max_length": 20, "batch_tokens": 100, "truncate": False,
            "progress_bar": False, "meta_fields_to_embed": ["title"], "embedding_separator": ": ",
        },
    }
    assert BGESparseDocumentEmbedder.from_dict(data).to_dict() == data


def test_sparse_embeddings_are_the_core_lexical_weights(m3_path, cpu):
    docs = [Document(content="Pandas eat bamboo.", meta={"title": "Bears"}), Document(content="Vectors in Milvus.")]
    embedder = BGESparseDocumentEmbedder(m3_path, device=cpu, meta_fields_to_embed=["title"], progress_bar=False)
    out = embedder.run(docs)["documents"]
    expected = Embedder(m3_path, device="cpu").encode(["Bears\nPandas eat bamboo.", "Vectors in Milvus."], sparse=True)
    for doc, weights in zip(out, expected.lexical_weights):
        assert isinstance(doc.sparse_embedding, SparseEmbedding)
        assert doc.sparse_embedding.indices == sorted(weights)
        assert doc.sparse_embedding.values == pytest.approx([weights[i] for i in sorted(weights)])
        assert doc.embedding is None  # only the sparse part is this component's


def test_empty_document_gets_the_placeholder_not_an_empty_vector(m3_path, cpu):
    out = BGESparseDocumentEmbedder(m3_path, device=cpu, progress_bar=False).run(
        [Document(content=""), Document(content=None)]
    )["documents"]
    pad = Embedder(m3_path, device="cpu").pad_token_id
    for doc in out:
        assert doc.sparse_embedding.indices == [pad]
        assert doc.sparse_embedding.values == [EMPTY_PLACEHOLDER_WEIGHT]


def test_input_documents_are_not_mutated(m3_path, cpu):
    docs = [Document(content="unchanged please", meta={"a": "b"})]
    before = copy.deepcopy(docs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = BGESparseDocumentEmbedder(m3_path, device=cpu, progress_bar=False).run(docs)["documents"]
    assert not [w for w in caught if "Mutating attribute" in str(w.message)]
    assert docs == before and docs[0].sparse_embedding is None
    assert out[0].sparse_embedding is not None and out[0].id == docs[0].id


def test_dense_then_sparse_indexing_costs_one_forward_per_document(m3_path, cpu, fresh):
    docs = [Document(content=f"document {i} {fresh}") for i in range(5)]
    dense = BGEDocumentEmbedder(m3_path, device=cpu, progress_bar=False)
    sparse = BGESparseDocumentEmbedder(m3_path, device=cpu, progress_bar=False)
    dense.warm_up()
    sparse.warm_up()
    engine = dense._embedder.loaded.engine
    before = engine.rows_forwarded
    both = sparse.run(dense.run(docs)["documents"])["documents"]
    assert engine.rows_forwarded - before == len(docs)
    assert all(d.embedding is not None and d.sparse_embedding is not None for d in both)


def test_a_dense_model_is_refused(dense_path, cpu):
    with pytest.raises(ValueError, match="need BGE-M3"):
        BGESparseDocumentEmbedder(dense_path, device=cpu).run([Document(content="x")])


@pytest.mark.parametrize("bad", ["text", [{"content": "dict"}], 7])
def test_wrong_input_type(m3_path, cpu, bad):
    with pytest.raises(TypeError, match="BGESparseDocumentEmbedder expects a list of Documents"):
        BGESparseDocumentEmbedder(m3_path, device=cpu).run(bad)


def test_warm_up_twice_keeps_the_core_object(m3_path, cpu):
    embedder = BGESparseDocumentEmbedder(m3_path, device=cpu)
    embedder.warm_up()
    first = embedder._embedder
    embedder.warm_up()
    assert embedder._embedder is first


async def test_run_async_matches_run(m3_path, cpu):
    embedder = BGESparseDocumentEmbedder(m3_path, device=cpu, progress_bar=False)
    docs = [Document(content="async sparse")]
    assert await embedder.run_async(documents=docs) == embedder.run(documents=docs)
