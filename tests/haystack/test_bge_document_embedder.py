from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from haystack.dataclasses import Document
from haystack.utils import ComponentDevice

from bge_core import Embedder
from haystack_integrations.components.embedders.bge import BGEDocumentEmbedder, BGETextEmbedder
from tests.haystack.conftest import TOKEN_DICT

TYPE = "haystack_integrations.components.embedders.bge.bge_document_embedder.BGEDocumentEmbedder"


def test_to_dict_defaults():
    assert BGEDocumentEmbedder().to_dict() == {
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
            "progress_bar": True,
            "meta_fields_to_embed": [],
            "embedding_separator": "\n",
        },
    }


def test_to_dict_from_dict_with_parameters(m3_path, cpu):
    embedder = BGEDocumentEmbedder(
        m3_path, device=cpu, token=None, prefix="P: ", suffix="~", dtype="bf16", max_length=32, batch_tokens=512,
        normalize_embeddings=False, truncate=False, progress_bar=False, meta_fields_to_embed=["title", "year"],
        embedding_separator=" | ",
    )
    data = embedder.to_dict()
    assert data == {
        "type": TYPE,
        "init_parameters": {
            "model": m3_path, "device": {"type": "single", "device": "cpu"}, "token": None, "prefix": "P: ",
            "suffix": "~", "dtype": "bf16", "max_length": 32, "batch_tokens": 512, "normalize_embeddings": False,
            "truncate": False, "progress_bar": False, "meta_fields_to_embed": ["title", "year"],
            "embedding_separator": " | ",
        },
    }
    restored = BGEDocumentEmbedder.from_dict(data)
    assert restored.to_dict() == data
    assert restored.meta_fields_to_embed == ["title", "year"]


def test_embeddings_are_the_core_document_vectors(m3_path, cpu):
    docs = [Document(content="Pandas eat bamboo."), Document(content=None), Document(content="Milvus stores vectors.")]
    out = BGEDocumentEmbedder(m3_path, device=cpu, progress_bar=False).run(documents=docs)["documents"]
    expected = Embedder(m3_path, device="cpu").encode_documents(["Pandas eat bamboo.", "", "Milvus stores vectors."])
    assert [d.id for d in out] == [d.id for d in docs]
    assert [d.content for d in out] == [d.content for d in docs]
    for doc, vector in zip(out, expected.dense):
        assert isinstance(doc.embedding, list) and isinstance(doc.embedding[0], float)
        np.testing.assert_allclose(doc.embedding, vector, rtol=1e-6, atol=1e-6)


def test_meta_fields_are_embedded_with_the_separator(m3_path, cpu):
    docs = [
        Document(content="body one", meta={"title": "Title", "year": 2024, "other": "x"}),
        Document(content="body two", meta={"title": "", "year": None}),  # empty values are skipped
    ]
    embedder = BGEDocumentEmbedder(
        m3_path, device=cpu, meta_fields_to_embed=["title", "year", "missing"], embedding_separator=" | ",
        suffix=".", progress_bar=False,
    )
    out = embedder.run(docs)["documents"]
    expected = Embedder(m3_path, device="cpu").encode(["Title | 2024 | body one.", "body two."]).dense
    np.testing.assert_allclose([d.embedding for d in out], expected, rtol=1e-6, atol=1e-6)


def test_prefix_is_put_before_every_document(m3_path, cpu):
    out = BGEDocumentEmbedder(m3_path, device=cpu, prefix="passage: ", progress_bar=False).run(
        [Document(content="abc")]
    )["documents"]
    expected = Embedder(m3_path, device="cpu").encode(["passage: abc"]).dense[0]
    np.testing.assert_allclose(out[0].embedding, expected, rtol=1e-6, atol=1e-6)


def test_input_documents_are_not_mutated(m3_path, cpu):
    docs = [Document(content="keep me", meta={"k": 1}), Document(content="me too", embedding=[0.5, 0.5])]
    before = copy.deepcopy(docs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = BGEDocumentEmbedder(m3_path, device=cpu, progress_bar=False).run(docs)["documents"]
    assert not [w for w in caught if "Mutating attribute" in str(w.message)]
    assert docs == before
    assert docs[0].embedding is None and docs[1].embedding == [0.5, 0.5]
    assert all(o is not d for o, d in zip(out, docs))
    assert out[1].embedding != [0.5, 0.5]
    assert out[0].meta == {"k": 1}


def test_empty_list(m3_path, cpu):
    embedder = BGEDocumentEmbedder(m3_path, device=cpu)
    assert embedder.run([]) == {"documents": []}


@pytest.mark.parametrize("bad", ["a string", [Document(content="ok"), "not a doc"], None, ("tuple",)])
def test_wrong_input_type(m3_path, cpu, bad):
    with pytest.raises(TypeError, match="BGEDocumentEmbedder expects a list of Documents"):
        BGEDocumentEmbedder(m3_path, device=cpu).run(bad)


def test_warm_up_twice_keeps_the_core_object(m3_path, cpu):
    embedder = BGEDocumentEmbedder(m3_path, device=cpu)
    embedder.warm_up()
    first = embedder._embedder
    embedder.warm_up()
    assert embedder._embedder is first


def test_text_and_document_embedders_share_the_weights(m3_path, cpu):
    text, docs = BGETextEmbedder(m3_path, device=cpu), BGEDocumentEmbedder(m3_path, device=cpu)
    text.warm_up()
    docs.warm_up()
    assert text._embedder is not docs._embedder  # each has its own options ...
    assert text._embedder.loaded is docs._embedder.loaded  # ... on one copy of the weights


def test_query_and_same_document_text_give_the_same_vector(m3_path, cpu):
    # BGE-M3 has no query instruction, so a document equal to the query embeds identically.
    query = BGETextEmbedder(m3_path, device=cpu).run("same words")["embedding"]
    doc = BGEDocumentEmbedder(m3_path, device=cpu, progress_bar=False).run([Document(content="same words")])
    np.testing.assert_allclose(query, doc["documents"][0].embedding, rtol=1e-6, atol=1e-6)


def test_truncate_false_names_the_too_long_document(m3_path, cpu):
    docs = [Document(content="short"), Document(content=" ".join(["long"] * 60))]
    with pytest.raises(ValueError, match="at index 1"):
        BGEDocumentEmbedder(m3_path, device=cpu, max_length=8, truncate=False, progress_bar=False).run(docs)


async def test_run_async_matches_run(m3_path, cpu):
    embedder = BGEDocumentEmbedder(m3_path, device=cpu, progress_bar=False)
    docs = [Document(content="async one"), Document(content="async two")]
    assert await embedder.run_async(documents=docs) == embedder.run(documents=docs)
