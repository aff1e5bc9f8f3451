"""The framework adapters give core's Visualized-BGE vectors, through the real LangChain, LlamaIndex and
Haystack classes."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from haystack import Document, Pipeline
from haystack.dataclasses import ByteStream
from langchain_core.embeddings import Embeddings as LangChainEmbeddings
from llama_index.core.embeddings import MultiModalEmbedding

from bge_core import Embedder
from bge_haystack import BGEImageDocumentEmbedder
from bge_langchain import BGEEmbeddings
from bge_llamaindex import BGEVisualizedEmbedding
from tests.visualized.conftest import noise_image, png_bytes


@pytest.fixture(scope="module")
def core(visualized_base) -> Embedder:
    pth, text_dir = visualized_base
    return Embedder(pth, text_model=text_dir, device="cpu")


def test_langchain_embed_image_and_text(visualized_base, core, image_files):
    pth, text_dir = visualized_base
    emb = BGEEmbeddings(model_name=pth, text_model=text_dir, device="cpu")
    assert isinstance(emb, LangChainEmbeddings) and emb.embedder.loaded is core.loaded  # one copy of the weights
    vectors = emb.embed_image(image_files[:3])
    assert all(isinstance(x, float) for x in vectors[0])
    np.testing.assert_allclose(vectors, core.encode_images(image_files[:3]).dense, atol=1e-6)
    np.testing.assert_allclose(emb.embed_query("a red dress"), core.encode(["a red dress"]).dense[0], atol=1e-6)
    np.testing.assert_allclose(asyncio.run(emb.aembed_image(image_files[:1])), vectors[:1], atol=1e-6)
    with pytest.raises(ValueError, match=r"images\[1\]"):
        emb.embed_image([image_files[0], __file__])
    with pytest.raises(TypeError):
        emb.embed_image(image_files[0])


def test_llamaindex_multimodal_embedding(visualized_base, core, image_files):
    pth, text_dir = visualized_base
    embed = BGEVisualizedEmbedding(model_name=pth, text_model=text_dir, device="cpu", embed_batch_size=2)
    assert isinstance(embed, MultiModalEmbedding)
    images = embed.get_image_embedding_batch(image_files)  # batches of 2 through LlamaIndex's own loop
    np.testing.assert_allclose(images, core.encode_images(image_files).dense, atol=1e-6)
    buffer = io.BytesIO(png_bytes(noise_image(64, 48)))
    np.testing.assert_allclose(embed.get_image_embedding(buffer), core.encode_images([noise_image(64, 48)]).dense[0],
                               atol=1e-6)
    np.testing.assert_allclose(embed.get_query_embedding("a cat"), core.encode(["a cat"]).dense[0], atol=1e-6)
    np.testing.assert_allclose(asyncio.run(embed.aget_image_embedding(image_files[0])), images[0], atol=1e-6)
    np.testing.assert_allclose(embed.get_multimodal_embedding(image_files[1], "in red"),
                               core.encode_multimodal([image_files[1]], ["in red"]).dense[0], atol=1e-6)
    with pytest.raises(ValueError, match="not a Visualized-BGE"):
        BGEVisualizedEmbedding(model_name=text_dir, device="cpu")


def test_haystack_image_document_embedder(visualized_base, core, image_files, tmp_path):
    pth, text_dir = visualized_base
    embedder = BGEImageDocumentEmbedder(model=pth, text_model=text_dir, text_meta_field="caption")
    docs = [
        Document(content="first", meta={"file_path": image_files[0], "caption": "a red dress"}),
        Document(content="second", blob=ByteStream(png_bytes(noise_image(80, 60)), mime_type="image/png")),
    ]
    pipeline = Pipeline()
    pipeline.add_component("embedder", embedder)
    out = pipeline.run({"embedder": {"documents": docs}})["embedder"]["documents"]
    assert docs[0].embedding is None  # inputs untouched
    want = core.encode_multimodal([image_files[0], noise_image(80, 60)], ["a red dress", ""]).dense
    np.testing.assert_allclose([d.embedding for d in out], want, atol=1e-6)
    again = BGEImageDocumentEmbedder.from_dict(embedder.to_dict())
    assert again.to_dict() == embedder.to_dict()
    assert again.run(docs[:1])["documents"][0].embedding == pytest.approx(out[0].embedding, abs=1e-6)
    with pytest.raises(ValueError, match=r"documents\[0\] has no image"):
        embedder.run([Document(content="text only")])
    shared = BGEImageDocumentEmbedder(model=core)
    shared.warm_up()
    assert shared.embedder is core
