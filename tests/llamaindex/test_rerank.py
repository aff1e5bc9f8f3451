"""`BGEReranker` as a LlamaIndex node postprocessor: ordering, copies, options, events, async."""

from __future__ import annotations

import json

import numpy as np
import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from bge_core import Reranker
from bge_llamaindex import BGEEmbedding, BGEReranker

PASSAGES = [
    "The giant panda is a bear native to south central China.",
    "Pandas eat bamboo shoots and leaves almost exclusively.",
    "Milvus is a vector database built for similarity search.",
    "Hybrid search combines dense vectors with sparse lexical weights.",
    "A reranker reads the query and the passage together and scores the pair.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "The quick brown fox jumps over the lazy dog.",
    "大熊猫是中国特有的熊科动物，主要以竹子为食。",
]
QUERY = "What do giant pandas eat?"


class Collector(BaseEventHandler):
    """Keeps the instrumentation events it sees."""

    events: list = []

    def handle(self, event, **kwargs) -> None:
        self.events.append(event)


@pytest.fixture
def rerank_events():
    root = get_dispatcher()
    handler = Collector(events=[])
    root.add_event_handler(handler)
    yield handler.events
    root.event_handlers.remove(handler)


@pytest.fixture(scope="module")
def reranker(cross_encoder_path) -> BGEReranker:
    return BGEReranker(cross_encoder_path, top_n=3, device="cpu")


@pytest.fixture(scope="module")
def core_reranker(cross_encoder_path) -> Reranker:
    return Reranker(cross_encoder_path, device="cpu")


def retrieved() -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(text=t, id_=f"p{i}", metadata={"rank": i}), score=1.0 - i / 10)
        for i, t in enumerate(PASSAGES)
    ]


class TestQueryEngine:
    def test_reorders_by_the_rerankers_scores(self, dense_path, reranker, core_reranker, mock_llm):
        nodes = [TextNode(text=t, id_=f"p{i}") for i, t in enumerate(PASSAGES)]
        index = VectorStoreIndex(nodes, embed_model=BGEEmbedding(dense_path, device="cpu"))
        candidates = index.as_retriever(similarity_top_k=6).retrieve(QUERY)
        engine = index.as_query_engine(
            similarity_top_k=6, node_postprocessors=[reranker], response_mode="no_text", llm=mock_llm
        )
        response = engine.query(QUERY)

        hits = core_reranker.rerank(QUERY, [c.node.get_content() for c in candidates], top_k=3)
        assert [n.node.node_id for n in response.source_nodes] == [candidates[h.index].node.node_id for h in hits]
        assert np.allclose([n.score for n in response.source_nodes], [h.score for h in hits], atol=1e-5)
        # The reranker changed the retriever's order (else this test would prove nothing).
        assert [n.node.node_id for n in response.source_nodes] != [c.node.node_id for c in candidates[:3]]


class TestPostprocess:
    def test_new_objects_input_untouched(self, reranker):
        nodes = retrieved()
        before = [(n.node.node_id, n.score, dict(n.node.metadata)) for n in nodes]
        out = BGEReranker(reranker.reranker, top_n=5, keep_retrieval_score=True).postprocess_nodes(
            nodes, query_str=QUERY
        )
        assert len(out) == 5
        assert [(n.node.node_id, n.score, dict(n.node.metadata)) for n in nodes] == before
        assert not any(o is n for o in out for n in nodes)
        assert all("retrieval_score" not in n.node.metadata for n in nodes)

    def test_scores_and_order_equal_core(self, reranker, core_reranker):
        nodes = retrieved()
        out = reranker.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
        hits = core_reranker.rerank(QUERY, [n.node.get_content(metadata_mode="embed") for n in nodes], top_k=3)
        assert [n.node.node_id for n in out] == [f"p{h.index}" for h in hits]
        assert [n.score for n in out] == pytest.approx([h.score for h in hits], abs=1e-5)
        assert all(type(n.score) is float for n in out)

    def test_keep_retrieval_score(self, reranker):
        kept = BGEReranker(reranker.reranker, top_n=8, keep_retrieval_score=True).postprocess_nodes(
            retrieved(), query_str=QUERY
        )
        for n in kept:
            rank = n.node.metadata["rank"]
            assert n.node.metadata["retrieval_score"] == pytest.approx(1.0 - rank / 10)
        plain = BGEReranker(reranker.reranker, top_n=8).postprocess_nodes(retrieved(), query_str=QUERY)
        assert all("retrieval_score" not in n.node.metadata for n in plain)

    def test_normalize_is_the_sigmoid_of_the_raw_score(self, reranker):
        raw = BGEReranker(reranker.reranker, top_n=8).postprocess_nodes(retrieved(), query_str=QUERY)
        sig = BGEReranker(reranker.reranker, top_n=8, normalize=True).postprocess_nodes(retrieved(), query_str=QUERY)
        assert [n.node.node_id for n in raw] == [n.node.node_id for n in sig]
        want = 1 / (1 + np.exp(-np.asarray([n.score for n in raw])))
        assert np.allclose([n.score for n in sig], want, atol=1e-6)
        assert all(0 < n.score < 1 for n in sig)
        own = BGEReranker(Reranker(reranker.reranker, normalize=True), top_n=8)  # a loaded reranker's own choice
        assert own.normalize is True
        assert [n.score for n in own.postprocess_nodes(retrieved(), query_str=QUERY)] == pytest.approx(
            [n.score for n in sig], abs=1e-6
        )

    def test_top_n(self, reranker):
        assert len(BGEReranker(reranker.reranker, top_n=1).postprocess_nodes(retrieved(), query_str=QUERY)) == 1
        assert len(BGEReranker(reranker.reranker, top_n=50).postprocess_nodes(retrieved(), query_str=QUERY)) == 8

    def test_scores_embed_content_with_metadata(self, reranker, core_reranker):
        node = TextNode(text="Pandas eat bamboo.", metadata={"title": "Diet"})
        out = reranker.postprocess_nodes([NodeWithScore(node=node, score=0.5)], query_str=QUERY)
        want = core_reranker.score([(QUERY, node.get_content(metadata_mode="embed"))])[0]
        assert out[0].score == pytest.approx(float(want), abs=1e-5)
        assert "title" in node.get_content(metadata_mode="embed")

    def test_no_query_is_a_value_error_and_no_nodes_give_none(self, reranker):
        with pytest.raises(ValueError, match="query"):
            reranker.postprocess_nodes(retrieved())
        assert reranker.postprocess_nodes([], query_str=QUERY) == []

    def test_all_pairs_are_one_engine_call(self, cross_encoder_path):
        rr = BGEReranker(cross_encoder_path, top_n=3, device="cpu")
        engine = rr.reranker.loaded.engine
        calls, rows = engine.forward_calls, engine.rows_forwarded
        rr.postprocess_nodes(retrieved(), query_str=QUERY)
        assert (engine.forward_calls - calls, engine.rows_forwarded - rows) == (1, len(PASSAGES))

    async def test_async_matches_sync(self, reranker):
        sync = reranker.postprocess_nodes(retrieved(), query_str=QUERY)
        asyn = await reranker.apostprocess_nodes(retrieved(), query_str=QUERY)
        assert [(n.node.node_id, n.score) for n in asyn] == [(n.node.node_id, n.score) for n in sync]
        with pytest.raises(ValueError):
            await reranker.apostprocess_nodes(retrieved())
        assert await reranker.apostprocess_nodes([], query_str=QUERY) == []


class TestEvents:
    def check(self, events, debug: LlamaDebugHandler, out) -> None:
        starts = [e for e in events if isinstance(e, ReRankStartEvent)]
        ends = [e for e in events if isinstance(e, ReRankEndEvent)]
        assert len(starts) == len(ends) == 1
        assert starts[0].query.query_str == QUERY and starts[0].top_n == 3 and len(starts[0].nodes) == 8
        assert starts[0].model_name.endswith("bge-reranker-tiny")
        assert [n.node.node_id for n in ends[0].nodes] == [n.node.node_id for n in out]
        pairs = debug.get_event_pairs(CBEventType.RERANKING)
        assert len(pairs) == 1
        start, end = pairs[0]
        assert start.payload["query_str"] == QUERY and start.payload["top_k"] == 3
        assert [n.node.node_id for n in end.payload["nodes"]] == [n.node.node_id for n in out]

    def test_sync_emits_rerank_events(self, reranker, rerank_events):
        debug = LlamaDebugHandler()
        rr = BGEReranker(reranker.reranker, top_n=3, callback_manager=CallbackManager([debug]))
        self.check(rerank_events, debug, rr.postprocess_nodes(retrieved(), query_str=QUERY))

    async def test_async_emits_rerank_events(self, reranker, rerank_events):
        debug = LlamaDebugHandler()
        rr = BGEReranker(reranker.reranker, top_n=3, callback_manager=CallbackManager([debug]))
        self.check(rerank_events, debug, await rr.apostprocess_nodes(retrieved(), query_str=QUERY))


class TestConfig:
    def test_to_dict_holds_no_model_and_round_trips(self, cross_encoder_path):
        rr = BGEReranker(cross_encoder_path, top_n=4, normalize=True, device="cpu", max_length=128)
        data = json.loads(rr.to_json())
        assert data["model_name"] == cross_encoder_path and data["class_name"] == "BGEReranker"
        again = BGEReranker.from_dict(data)
        assert again.to_dict() == rr.to_dict()
        assert again.reranker.loaded is rr.reranker.loaded
        assert again.reranker.max_length == 128

    def test_misspelt_option_fails(self, cross_encoder_path):
        with pytest.raises(ValueError, match="topn"):
            BGEReranker(cross_encoder_path, topn=3)

    def test_loaded_reranker_serialises_as_its_path(self, core_reranker):
        rr = BGEReranker(core_reranker)
        assert rr.reranker is core_reranker
        data = json.loads(rr.to_json())
        assert data["model_name"] == core_reranker.name
        assert data["device"] == "cpu" and data["dtype"] == "float32"
        assert BGEReranker.from_dict(data).reranker.loaded is core_reranker.loaded
        assert BGEReranker(core_reranker, max_length=64).reranker.loaded is core_reranker.loaded
        with pytest.raises(ValueError, match="dtype"):
            BGEReranker(core_reranker, dtype="fp16")
