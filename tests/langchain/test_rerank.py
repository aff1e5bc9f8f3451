"""`BGEReranker` in a `ContextualCompressionRetriever`, on cross-encoder and LLM rerankers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import ValidationError

from bge_core import ModelLoadError, Reranker
from bge_langchain import BGEEmbeddings, BGEReranker
from tests.fixtures.checkpoints import CORPUS
from tests.fixtures.llm_rerankers import build_gemma_reranker

QUERY = "Which animal eats bamboo in China?"


def make_docs() -> list[Document]:
    return [
        Document(page_content=text, id=f"doc-{i}", metadata={"source": f"s{i}", "tags": {"lang": "x", "n": [i]}})
        for i, text in enumerate(CORPUS[:10])
    ]


def core_order(reranker: Reranker, docs: list[Document], normalize: bool) -> tuple[list[str], np.ndarray]:
    """Ids sorted by the core's scores (best first) and those scores."""
    scores = reranker.score([(QUERY, d.page_content) for d in docs], normalize=normalize)
    order = np.argsort(-scores, kind="stable")
    return [docs[i].id for i in order], scores[order]


@pytest.fixture(scope="module")
def llm_reranker_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_gemma_reranker(tmp_path_factory.mktemp("llm") / "bge-reranker-v2-gemma-tiny"))


def test_compression_retriever_reorders_by_core_scores(dense_path: str, cross_encoder_path: str) -> None:
    store = InMemoryVectorStore(BGEEmbeddings(model_name=dense_path, device="cpu"))
    store.add_documents(make_docs())
    base = store.as_retriever(search_kwargs={"k": 8})
    retriever = ContextualCompressionRetriever(
        base_compressor=BGEReranker(model_name=cross_encoder_path, device="cpu", top_n=5), base_retriever=base
    )
    candidates = base.invoke(QUERY)
    reranked = retriever.invoke(QUERY)

    ids, scores = core_order(Reranker(cross_encoder_path, device="cpu"), candidates, normalize=True)
    assert [d.id for d in reranked] == ids[:5]
    assert [d.metadata["relevance_score"] for d in reranked] == pytest.approx(scores[:5].tolist(), rel=1e-5)
    assert [d.id for d in reranked] != [d.id for d in candidates[:5]]  # the reranker changed the order
    assert all(0.0 < d.metadata["relevance_score"] < 1.0 for d in reranked)


async def test_async_retriever_matches_sync(dense_path: str, cross_encoder_path: str) -> None:
    store = InMemoryVectorStore(BGEEmbeddings(model_name=dense_path, device="cpu"))
    await store.aadd_documents(make_docs())
    retriever = ContextualCompressionRetriever(
        base_compressor=BGEReranker(model_name=cross_encoder_path, device="cpu", top_n=4),
        base_retriever=store.as_retriever(search_kwargs={"k": 8}),
    )
    assert await retriever.ainvoke(QUERY) == retriever.invoke(QUERY)


async def test_copies_keep_ids_and_metadata_and_never_mutate(cross_encoder_path: str) -> None:
    docs = make_docs()
    snapshot = copy.deepcopy(docs)
    reranker = BGEReranker(model_name=cross_encoder_path, device="cpu", top_n=None)
    for out in (reranker.compress_documents(docs, QUERY), await reranker.acompress_documents(docs, QUERY)):
        assert docs == snapshot  # inputs untouched
        assert sorted(d.id for d in out) == sorted(d.id for d in docs)
        by_id = {d.id: d for d in docs}
        for new in out:
            old = by_id[new.id]
            assert new is not old and new.page_content == old.page_content
            assert {k: v for k, v in new.metadata.items() if k != "relevance_score"} == old.metadata
            assert new.metadata["tags"] is not old.metadata["tags"]  # deep copy
        scores = [d.metadata["relevance_score"] for d in out]
        assert scores == sorted(scores, reverse=True)
    out[0].metadata["tags"]["n"].append(99)
    assert docs == snapshot


def test_top_n_normalize_and_empty(cross_encoder_path: str) -> None:
    docs = make_docs()
    core = Reranker(cross_encoder_path, device="cpu")
    assert len(BGEReranker(model_name=cross_encoder_path, device="cpu").compress_documents(docs, QUERY)) == 3
    assert BGEReranker(model_name=cross_encoder_path, device="cpu", top_n=0).compress_documents(docs, QUERY) == []
    assert BGEReranker(model_name=cross_encoder_path, device="cpu").compress_documents([], QUERY) == []

    raw = BGEReranker(model_name=cross_encoder_path, device="cpu", normalize=False, top_n=None)
    out = raw.compress_documents(docs, QUERY)
    ids, scores = core_order(core, docs, normalize=False)
    assert [d.id for d in out] == ids
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx(scores.tolist(), rel=1e-5)
    assert any(not 0.0 < s < 1.0 for s in scores)  # raw logits, not probabilities


def test_llm_reranker(llm_reranker_path: str) -> None:
    docs = make_docs()
    reranker = BGEReranker(model_name=llm_reranker_path, device="cpu", top_n=4, normalize=False)
    assert reranker.reranker.family == "llm_reranker"
    out = reranker.compress_documents(docs, QUERY)
    ids, scores = core_order(Reranker(llm_reranker_path, device="cpu"), docs, normalize=False)
    assert [d.id for d in out] == ids[:4]
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx(scores[:4].tolist(), rel=1e-4)


def test_loaded_reranker_and_bad_input(cross_encoder_path: str, dense_path: str, tmp_path) -> None:
    core = Reranker(cross_encoder_path, device="cpu")
    assert BGEReranker(model_name=core).reranker is core
    assert BGEReranker(model_name=cross_encoder_path, device="cpu").reranker.loaded is core.loaded  # shared weights
    with pytest.raises(ValueError, match="device and dtype"):
        BGEReranker(model_name=core, device="cpu")
    with pytest.raises(ValueError, match="Embedder"):
        BGEReranker(model_name=dense_path, device="cpu")
    with pytest.raises(ModelLoadError, match="no such model directory"):
        BGEReranker(model_name=str(tmp_path / "missing"))
    with pytest.raises(ValidationError):
        BGEReranker(model_name=core, top_k=3)
    with pytest.raises(ValidationError):
        BGEReranker(model_name=core, top_n=-1)
    reranker = BGEReranker(model_name=core)
    with pytest.raises(TypeError, match="query must be str"):
        reranker.compress_documents(make_docs(), None)
    with pytest.raises(TypeError, match=r"documents\[1\]"):
        reranker.compress_documents([make_docs()[0], "plain text"], QUERY)
