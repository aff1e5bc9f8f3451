from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from haystack.dataclasses import Document
from haystack.utils import ComponentDevice

from bge_core import Reranker
from haystack_integrations.components.rankers.bge import BGERanker
from tests.haystack.conftest import TOKEN_DICT

TYPE = "haystack_integrations.components.rankers.bge.bge_ranker.BGERanker"

TEXTS = [
    "The giant panda is a bear native to China.",
    "Milvus is a vector database built for similarity search.",
    "Paris is the capital of France.",
    "Bamboo makes up most of a panda diet.",
    "Haystack builds retrieval pipelines from components.",
]
QUERY = "What do pandas eat?"


@pytest.fixture
def docs() -> list[Document]:
    return [Document(content=t, meta={"n": i}) for i, t in enumerate(TEXTS)]


def core_scores(path: str, query: str, texts: list[str], normalize: bool = True) -> np.ndarray:
    return Reranker(path, device="cpu").score([(query, t) for t in texts], normalize=normalize)


def test_to_dict_defaults():
    assert BGERanker().to_dict() == {
        "type": TYPE,
        "init_parameters": {
            "model": "BAAI/bge-reranker-v2-m3",
            "device": ComponentDevice.resolve_device(None).to_dict(),
            "token": TOKEN_DICT,
            "top_k": 10,
            "query_prefix": None,
            "document_prefix": None,
            "dtype": None,
            "max_length": None,
            "batch_tokens": None,
            "scale_score": True,
            "score_threshold": None,
            "truncate": True,
            "progress_bar": False,
            "meta_fields_to_embed": [],
            "embedding_separator": "\n",
        },
    }


def test_to_dict_from_dict_with_parameters(cross_encoder_path, cpu):
    data = BGERanker(
        cross_encoder_path, device=cpu, token=None, top_k=3, query_prefix="Q: ", document_prefix="", dtype="fp32",
        max_length=128, batch_tokens=2048, scale_score=False, score_threshold=-1.5, truncate=False, progress_bar=True,
        meta_fields_to_embed=["title"], embedding_separator=" - ",
    ).to_dict()
    assert data == {
        "type": TYPE,
        "init_parameters": {
            "model": cross_encoder_path, "device": {"type": "single", "device": "cpu"}, "token": None, "top_k": 3,
            "query_prefix": "Q: ", "document_prefix": "", "dtype": "fp32", "max_length": 128, "batch_tokens": 2048,
            "scale_score": False, "score_threshold": -1.5, "truncate": False, "progress_bar": True,
            "meta_fields_to_embed": ["title"], "embedding_separator": " - ",
        },
    }
    assert BGERanker.from_dict(data).to_dict() == data


def test_core_reranker_as_model(cross_encoder_path):
    core = Reranker(cross_encoder_path, device="cpu")
    ranker = BGERanker(core)
    params = ranker.to_dict()["init_parameters"]
    assert params["model"] == cross_encoder_path and params["device"] == {"type": "single", "device": "cpu"}
    ranker.warm_up()
    assert ranker._reranker.loaded is core.loaded


def test_an_embedder_is_not_a_reranker(m3_path):
    from bge_core import Embedder

    with pytest.raises(TypeError, match="bge_core.Reranker"):
        BGERanker(Embedder(m3_path, device="cpu"))


def test_scores_are_the_core_sigmoid_scores_sorted(cross_encoder_path, cpu, docs):
    out = BGERanker(cross_encoder_path, device=cpu).run(query=QUERY, documents=docs)["documents"]
    expected = core_scores(cross_encoder_path, QUERY, TEXTS)
    assert len(out) == len(docs)
    assert [d.meta["n"] for d in out] == list(np.argsort(-expected, kind="stable"))
    for doc in out:
        assert isinstance(doc.score, float) and 0 < doc.score < 1
        assert doc.score == pytest.approx(float(expected[doc.meta["n"]]), abs=1e-6)
        assert doc.id == docs[doc.meta["n"]].id


def test_top_k_from_init_and_from_run(cross_encoder_path, cpu, docs):
    ranker = BGERanker(cross_encoder_path, device=cpu, top_k=2)
    best = ranker.run(QUERY, docs)["documents"]
    assert len(best) == 2
    assert len(ranker.run(QUERY, docs, top_k=4)["documents"]) == 4
    assert [d.id for d in ranker.run(QUERY, docs, top_k=4)["documents"][:2]] == [d.id for d in best]


def test_scale_score_false_at_run_time_gives_raw_logits(cross_encoder_path, cpu, docs):
    out = BGERanker(cross_encoder_path, device=cpu).run(QUERY, docs, scale_score=False)["documents"]
    raw = core_scores(cross_encoder_path, QUERY, TEXTS, normalize=False)
    assert sorted(d.score for d in out) == pytest.approx(sorted(raw.tolist()), abs=1e-5)
    assert any(d.score < 0 or d.score > 1 for d in out)  # the premise: logits leave (0, 1)


def test_score_threshold(cross_encoder_path, cpu, docs):
    scores = sorted(core_scores(cross_encoder_path, QUERY, TEXTS).tolist(), reverse=True)
    threshold = (scores[1] + scores[2]) / 2
    ranker = BGERanker(cross_encoder_path, device=cpu, score_threshold=threshold)
    assert len(ranker.run(QUERY, docs)["documents"]) == 2
    assert len(ranker.run(QUERY, docs, score_threshold=0.0)["documents"]) == len(docs)


def test_meta_fields_and_prefix(cross_encoder_path, cpu):
    docs = [Document(content="body", meta={"title": "Pandas"}), Document(content="other", meta={"title": "Cats"})]
    ranker = BGERanker(
        cross_encoder_path, device=cpu, meta_fields_to_embed=["title"], embedding_separator=": ", query_prefix="Q: "
    )
    out = ranker.run("bears", docs)["documents"]
    expected = core_scores(cross_encoder_path, "Q: bears", ["Pandas: body", "Cats: other"])
    assert {d.content: d.score for d in out} == pytest.approx({"body": expected[0], "other": expected[1]}, abs=1e-6)


def test_input_documents_are_not_mutated(cross_encoder_path, cpu, docs):
    docs[0] = Document(content=docs[0].content, meta=docs[0].meta, score=123.0)
    before = copy.deepcopy(docs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = BGERanker(cross_encoder_path, device=cpu).run(QUERY, docs)["documents"]
    assert not [w for w in caught if "Mutating attribute" in str(w.message)]
    assert docs == before and docs[0].score == 123.0
    assert all(d.score != 123.0 for d in out)


def test_empty_documents(cross_encoder_path, cpu):
    assert BGERanker(cross_encoder_path, device=cpu).run(QUERY, []) == {"documents": []}


@pytest.mark.parametrize(
    ("query", "documents", "match"),
    [
        (None, [], "query as a string"),
        (["q"], [], "query as a string"),
        ("q", "not a list", "list of Documents"),
        ("q", ["text"], "list of Documents"),
    ],
)
def test_wrong_input_types(cross_encoder_path, cpu, query, documents, match):
    with pytest.raises(TypeError, match=match):
        BGERanker(cross_encoder_path, device=cpu).run(query, documents)


@pytest.mark.parametrize("top_k", [0, -1, 1.5])
def test_bad_top_k(cross_encoder_path, cpu, docs, top_k):
    with pytest.raises(ValueError, match="top_k"):
        BGERanker(cross_encoder_path, device=cpu).run(QUERY, docs, top_k=top_k)
    with pytest.raises(ValueError, match="top_k"):
        BGERanker(cross_encoder_path, device=cpu, top_k=top_k)


def test_warm_up_twice_keeps_the_core_object(cross_encoder_path, cpu):
    ranker = BGERanker(cross_encoder_path, device=cpu)
    ranker.warm_up()
    first = ranker._reranker
    ranker.warm_up()
    assert ranker._reranker is first
    assert BGERanker(cross_encoder_path, device=cpu, top_k=1)._reranker is None  # building loads nothing


def test_rankers_of_one_model_share_weights(cross_encoder_path, cpu):
    a, b = BGERanker(cross_encoder_path, device=cpu), BGERanker(cross_encoder_path, device=cpu, scale_score=False)
    a.warm_up()
    b.warm_up()
    assert a._reranker.loaded is b._reranker.loaded


async def test_run_async_matches_run(cross_encoder_path, cpu, docs):
    ranker = BGERanker(cross_encoder_path, device=cpu, top_k=3)
    assert await ranker.run_async(query=QUERY, documents=docs, top_k=2) == ranker.run(QUERY, docs, top_k=2)
    with pytest.raises(TypeError):
        await ranker.run_async(query=1, documents=docs)
