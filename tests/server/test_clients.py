"""Real clients of TEI, OpenAI and Cohere-style servers, pointed at `bge serve`, end to end."""

from __future__ import annotations

import numpy as np
import pytest

from bge_core import Embedder, Reranker
from tests.server.conftest import Server
from tests.server.test_parity import assert_close

TEXTS = ["The giant panda is a bear.", "Milvus stores vectors.", "大熊猫吃竹子。", ""]
QUERY = "What do pandas eat?"


@pytest.fixture
def loopback_hf(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub refuses every URL in offline mode (which the test run keeps on so no weights are
    fetched); these clients only talk to the loopback server, so its offline switch is lifted for them."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_huggingface_hub_inference_client(loopback_hf: None, server: Server, m3: Embedder) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=server.url)
    vector = client.feature_extraction(TEXTS[0])
    assert_close(np.asarray(vector).reshape(1, -1), m3.encode(TEXTS[:1]).dense)
    raw = client.feature_extraction(TEXTS[1], normalize=False)
    assert_close(np.asarray(raw).reshape(1, -1), m3.encode(TEXTS[1:2]).dense)


def test_haystack_tei_embedders_and_sparse_embedders(loopback_hf: None, server: Server, m3: Embedder) -> None:
    from haystack import Document
    from haystack.utils import Secret

    from haystack_integrations.components.embedders.huggingface_api import (
        HuggingFaceAPIDocumentEmbedder,
        HuggingFaceAPITextEmbedder,
        HuggingFaceTEISparseDocumentEmbedder,
        HuggingFaceTEISparseTextEmbedder,
    )

    params = {"api_type": "text_embeddings_inference", "api_params": {"url": server.url}, "token": None}
    text = HuggingFaceAPITextEmbedder(**params).run(text=TEXTS[0])["embedding"]
    assert_close(np.asarray([text]), m3.encode(TEXTS[:1]).dense)
    documents = HuggingFaceAPIDocumentEmbedder(**params).run(documents=[Document(content=t) for t in TEXTS[:3]])
    assert_close([d.embedding for d in documents["documents"]], m3.encode(TEXTS[:3]).dense)

    expected = m3.encode(TEXTS[:3], dense=False, sparse=True).lexical_weights
    sparse_text = HuggingFaceTEISparseTextEmbedder(api_base_url=server.url, token=Secret.from_token("unused"))
    embedding = sparse_text.run(text=TEXTS[0])["sparse_embedding"]
    assert dict(zip(embedding.indices, np.float32(embedding.values))) == {
        k: np.float32(v) for k, v in expected[0].items()}
    sparse_docs = HuggingFaceTEISparseDocumentEmbedder(api_base_url=server.url, token=Secret.from_token("unused"))
    out = sparse_docs.run(documents=[Document(content=t) for t in TEXTS[:3]])["documents"]
    assert [sorted(d.sparse_embedding.indices) for d in out] == [sorted(w) for w in expected]


def test_haystack_tei_ranker(server: Server, reranker: Reranker) -> None:
    from haystack import Document

    from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker

    ranker = HuggingFaceTEIRanker(url=server.url, top_k=2, token=None)
    ranked = ranker.run(query=QUERY, documents=[Document(content=t) for t in TEXTS])["documents"]
    scores = reranker.score([(QUERY, t) for t in TEXTS], normalize=True)
    assert [d.content for d in ranked] == [TEXTS[i] for i in np.argsort(-scores, kind="stable")[:2]]
    assert abs(ranked[0].score - float(scores.max())) <= 1e-5


def test_llamaindex_tei_embedding_and_rerank_postprocessor(server: Server, m3: Embedder, reranker: Reranker) -> None:
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    embed = TextEmbeddingsInference(model_name="bge-m3", base_url=server.url, embed_batch_size=2)
    assert_close(embed.get_text_embedding_batch(TEXTS[:3]), m3.encode(TEXTS[:3]).dense)
    assert_close([embed.get_query_embedding(QUERY)], m3.encode([QUERY]).dense)

    rerank = TextEmbeddingInference(base_url=server.url, top_n=2)
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in TEXTS]
    out = rerank.postprocess_nodes(nodes, QueryBundle(QUERY))
    scores = reranker.score([(QUERY, t) for t in TEXTS], normalize=True)
    assert [n.node.get_content() for n in out] == [TEXTS[i] for i in np.argsort(-scores, kind="stable")[:2]]


def test_langchain_openai_embeddings_base64_path(server: Server, m3: Embedder) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model="bge-m3", base_url=server.url + "/v1", api_key="unused",
                                  check_embedding_ctx_length=False)
    assert_close(embeddings.embed_documents(TEXTS), m3.encode(TEXTS).dense)
    assert_close([embeddings.embed_query(QUERY)], m3.encode([QUERY]).dense)


def test_openai_client(server: Server, m3: Embedder, dense: Embedder) -> None:
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    result = client.embeddings.create(model="bge-small", input=TEXTS)  # the SDK asks for base64
    assert_close([d.embedding for d in result.data], dense.encode(TEXTS).dense)
    assert result.model == "bge-small" and result.usage.total_tokens > 0
    floats = client.embeddings.create(model="bge-m3", input=TEXTS[0], encoding_format="float")
    assert_close([floats.data[0].embedding], m3.encode(TEXTS[:1]).dense)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_pymilvus_model_tei_functions(server: Server, m3: Embedder, reranker: Reranker) -> None:
    from pymilvus.model.dense import TEIEmbeddingFunction
    from pymilvus.model.reranker import TEIRerankFunction

    function = TEIEmbeddingFunction(api_url=server.url)
    assert function.dim == m3.dim
    assert_close(function.encode_documents(TEXTS), m3.encode(TEXTS).dense)
    rerank = TEIRerankFunction(api_url=server.url)
    results = rerank(QUERY, TEXTS, top_k=3)
    scores = reranker.score([(QUERY, t) for t in TEXTS], normalize=True)
    order = np.argsort(-scores, kind="stable").tolist()
    assert [r.index for r in results[:3]] == order[:3]
    assert [r.text for r in results[:3]] == [TEXTS[i] for i in order[:3]]
    assert abs(results[0].score - float(scores.max())) <= 1e-5
