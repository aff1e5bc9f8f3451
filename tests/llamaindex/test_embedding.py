"""`BGEEmbedding` on real LlamaIndex classes: config, instructions, batching, async, ingestion."""

from __future__ import annotations

import asyncio
import gc
import json
import pickle
import shutil
import time

import numpy as np
import pytest
from llama_index.core import Document
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import MetadataMode

from bge_core import Embedder
from bge_core.registry import EN_QUERY_INSTRUCTION
from bge_llamaindex import BGEEmbedding

TEXTS = ["The giant panda is a bear.", "Milvus stores vectors.", "", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def published_name_dir(dense_path, tmp_path_factory) -> str:
    """The dense fixture under a published id's name, so the registry gives it the v1.5 query instruction.

    A copy, not a symlink: core caches loaded models by real path, and the fixture's own name has
    no instruction.
    """
    return shutil.copytree(dense_path, tmp_path_factory.mktemp("published") / "bge-small-en-v1.5")


def close(a: list[float], b: np.ndarray) -> bool:
    return np.allclose(np.asarray(a, dtype=np.float32), b, atol=1e-5)


class TestConfig:
    def test_defaults(self, dense_path):
        emb = BGEEmbedding(dense_path)
        assert BGEEmbedding.class_name() == "BGEEmbedding"
        assert emb.model_name == dense_path
        assert 10 < emb.embed_batch_size <= 2048
        assert isinstance(emb.embedder, Embedder)

    def test_to_dict_holds_no_model_and_round_trips(self, dense_path):
        emb = BGEEmbedding(dense_path, device="cpu", max_length=64, query_instruction="Q: ", embed_batch_size=32)
        data = emb.to_dict()
        json.dumps(data)  # plain JSON types only: no model object anywhere
        assert data["model_name"] == dense_path and data["class_name"] == "BGEEmbedding"
        assert not any(isinstance(v, Embedder) for v in data.values())
        again = BGEEmbedding.from_dict(data)
        assert again.to_dict() == data
        assert again.embedder.loaded is emb.embedder.loaded  # one copy of the weights
        assert again.get_query_embedding("x") == emb.get_query_embedding("x")
        assert BGEEmbedding.from_json(emb.to_json()).to_dict() == data

    def test_loaded_embedder_serialises_as_its_path_and_settings(self, published_name_dir, tmp_path):
        core = Embedder(str(published_name_dir), device="cpu", query_instruction="Find: ", max_length=40)
        emb = BGEEmbedding(core)
        assert emb.embedder is core  # used as it is
        data = json.loads(emb.to_json())
        assert data["model_name"] == core.name
        assert data["query_instruction"] == "Find: " and data["max_length"] == 40
        assert data["device"] == "cpu" and data["dtype"] == "float32"
        rebuilt = BGEEmbedding.from_dict(data)
        assert rebuilt.get_query_embedding("q") == emb.get_query_embedding("q")

    def test_pickles_by_config(self, dense_path):
        emb = BGEEmbedding(dense_path, device="cpu", query_instruction="Q: ")
        again = pickle.loads(pickle.dumps(emb))  # how multi-process ingestion ships transformations
        assert again.to_dict() == emb.to_dict()
        assert again.get_query_embedding("x") == emb.get_query_embedding("x")

    def test_misspelt_option_fails(self, dense_path):
        with pytest.raises(ValueError, match="devcie"):
            BGEEmbedding(dense_path, devcie="cpu")

    def test_options_over_a_loaded_embedder(self, dense_path):
        core = Embedder(dense_path, device="cpu", query_instruction="Find: ")
        emb = BGEEmbedding(core, max_length=16)
        assert emb.embedder is not core and emb.embedder.loaded is core.loaded
        assert emb.embedder.max_length == 16
        assert emb.embedder.query_instruction == "Find: "  # the given object's other settings stay
        with pytest.raises(ValueError, match="device"):
            BGEEmbedding(core, device="cpu")  # a loaded model keeps its place; a config saying otherwise would lie


class TestInstructions:
    def test_registry_instruction_on_queries_only(self, published_name_dir):
        emb = BGEEmbedding(str(published_name_dir), device="cpu")
        core = Embedder(str(published_name_dir), device="cpu", query_instruction="")
        q = "what is a panda?"
        assert close(emb.get_query_embedding(q), core.encode([EN_QUERY_INSTRUCTION + q]).dense[0])
        assert close(emb.get_text_embedding(q), core.encode([q]).dense[0])
        assert not close(emb.get_query_embedding(q), core.encode([q]).dense[0])

    def test_instruction_off_and_custom(self, published_name_dir):
        core = Embedder(str(published_name_dir), device="cpu", query_instruction="")
        off = BGEEmbedding(str(published_name_dir), device="cpu", query_instruction="")
        custom = BGEEmbedding(str(published_name_dir), device="cpu", query_instruction="Search: ")
        q = "what is a panda?"
        assert close(off.get_query_embedding(q), core.encode([q]).dense[0])
        assert close(custom.get_query_embedding(q), core.encode(["Search: " + q]).dense[0])

    async def test_async_query_matches_sync(self, published_name_dir):
        emb = BGEEmbedding(str(published_name_dir), device="cpu")
        assert close(await emb.aget_query_embedding("panda"), np.asarray(emb.get_query_embedding("panda")))
        assert close(await emb.aget_text_embedding("panda"), np.asarray(emb.get_text_embedding("panda")))


class TestBatching:
    def test_batch_is_one_engine_call_equal_to_core(self, dense_path):
        emb = BGEEmbedding(dense_path, device="cpu")
        engine = emb.embedder.loaded.engine
        texts = [f"document {i} about bears and bamboo" for i in range(40)]
        calls, rows = engine.forward_calls, engine.rows_forwarded
        got = emb.get_text_embedding_batch(texts)
        assert engine.forward_calls - calls == 1  # the default loops one text per call
        assert engine.rows_forwarded - rows == 40
        want = Embedder(dense_path, device="cpu").encode_documents(texts).dense
        assert np.allclose(np.asarray(got, dtype=np.float32), want, atol=1e-5)
        assert all(type(x) is float for x in got[0])

    async def test_async_batch_matches_sync(self, dense_path):
        emb = BGEEmbedding(dense_path, device="cpu", embed_batch_size=3)
        got = await emb.aget_text_embedding_batch(TEXTS)
        assert np.allclose(got, emb.get_text_embedding_batch(TEXTS), atol=1e-5)

    def test_bad_input_is_a_type_error_naming_the_index(self, dense_path):
        emb = BGEEmbedding(dense_path, device="cpu")
        with pytest.raises(TypeError, match="1"):
            emb.get_text_embedding_batch(["fine", None])

    def test_truncate_false_rejects_long_text(self, dense_path):
        emb = BGEEmbedding(dense_path, device="cpu", max_length=8, truncate=False)
        with pytest.raises(ValueError, match="1"):
            emb.get_text_embedding_batch(["short", "far too long a text " * 20])
        assert len(BGEEmbedding(dense_path, device="cpu", max_length=8).get_text_embedding("long " * 50)) > 0


async def test_event_loop_keeps_running_during_async_batch(dense_path):
    """A ticker sleeping 5 ms must never wait more than 50 ms while a long batch is embedded.

    `gc.freeze()` first: a full collection of the test process's heap (~600k objects once every
    framework is imported) holds the GIL for hundreds of ms in whichever thread triggers it. That
    pause belongs to the process, not to this adapter; frozen, only objects made during the run
    are scanned, and what is left to measure is whether embedding ever runs on the loop.
    """
    emb = BGEEmbedding(dense_path, device="cpu", embed_batch_size=256)
    emb.get_text_embedding("warm up")
    texts = [f"text {i}: the giant panda eats bamboo in the mountains of south central China" for i in range(8000)]
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - start - 0.005)

    gc.collect()
    gc.freeze()
    try:
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        start = time.perf_counter()
        vectors = await emb.aget_text_embedding_batch(texts)
        elapsed = time.perf_counter() - start
        done.set()
        await tick
    finally:
        gc.unfreeze()
    assert len(vectors) == len(texts)
    assert elapsed > 0.5, "the workload is too small to show blocking"
    assert len(lags) > 20
    assert max(lags) < 0.050, f"event loop blocked for {max(lags) * 1000:.0f} ms"


class TestIngestionPipeline:
    DOCS = [
        Document(text="The giant panda is a bear. " * 12, metadata={"source": "zoo"}),
        Document(text="Milvus is a vector database built for similarity search. " * 8),
    ]

    def test_run_embeds_nodes_like_core(self, dense_path):
        emb = BGEEmbedding(dense_path, device="cpu")
        pipeline = IngestionPipeline(transformations=[SentenceSplitter(chunk_size=48, chunk_overlap=0), emb])
        nodes = pipeline.run(documents=[d.model_copy() for d in self.DOCS])
        assert len(nodes) > len(self.DOCS)  # the splitter ran before the embedding
        texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        want = Embedder(dense_path, device="cpu").encode_documents(texts).dense
        assert np.allclose(np.asarray([n.embedding for n in nodes], dtype=np.float32), want, atol=1e-5)

    async def test_arun_matches_run(self, dense_path):
        emb = BGEEmbedding(dense_path, device="cpu")
        sync = IngestionPipeline(transformations=[SentenceSplitter(chunk_size=48, chunk_overlap=0), emb])
        asyn = IngestionPipeline(transformations=[SentenceSplitter(chunk_size=48, chunk_overlap=0), emb])
        a = sync.run(documents=[d.model_copy() for d in self.DOCS])
        b = await asyn.arun(documents=[d.model_copy() for d in self.DOCS])
        assert [n.text for n in a] == [n.text for n in b]
        assert np.allclose([n.embedding for n in a], [n.embedding for n in b], atol=1e-5)
