"""`BGEEmbeddings`: instructions, vectors, bad input, sharing and a non-blocking async path."""

from __future__ import annotations

import asyncio
import gc
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from bge_core import Embedder, ModelLoadError
from bge_core.registry import EN_QUERY_INSTRUCTION
from bge_langchain import BGEEmbeddings, BGEM3SparseEmbeddings
from tests.fixtures.checkpoints import CORPUS

QUERY = "what do pandas eat?"
DOCS = ["Pandas eat bamboo shoots and leaves almost exclusively.", "Paris is the capital of France.", ""]


@pytest.fixture(scope="module")
def registered_dense(dense_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny dense checkpoint under a published model's name, so the registry's instruction applies."""
    return shutil.copytree(dense_path, tmp_path_factory.mktemp("hub") / "bge-small-en-v1.5").as_posix()


def test_query_instruction_from_registry_on_queries_only(registered_dense: str) -> None:
    emb = BGEEmbeddings(model_name=registered_dense, device="cpu")
    core = Embedder(registered_dense, device="cpu")
    assert emb.embedder.query_instruction == EN_QUERY_INSTRUCTION

    query = np.asarray(emb.embed_query(QUERY))
    np.testing.assert_allclose(query, core.encode_queries([QUERY]).dense[0], atol=1e-6)
    np.testing.assert_allclose(query, core.encode([EN_QUERY_INSTRUCTION + QUERY]).dense[0], atol=1e-6)
    assert not np.allclose(query, core.encode([QUERY]).dense[0], atol=1e-3)  # the instruction changed it

    docs = np.asarray(emb.embed_documents(DOCS))
    np.testing.assert_allclose(docs, core.encode(DOCS).dense, atol=1e-6)  # documents: no instruction


def test_query_instruction_overrides(registered_dense: str) -> None:
    core = Embedder(registered_dense, device="cpu")
    off = BGEEmbeddings(model_name=registered_dense, device="cpu", query_instruction="")
    np.testing.assert_allclose(off.embed_query(QUERY), core.encode([QUERY]).dense[0], atol=1e-6)
    custom = BGEEmbeddings(model_name=registered_dense, device="cpu", query_instruction="Q: ")
    np.testing.assert_allclose(custom.embed_query(QUERY), core.encode(["Q: " + QUERY]).dense[0], atol=1e-6)


def test_m3_has_no_query_instruction(m3_path: str) -> None:
    emb = BGEEmbeddings(model_name=m3_path, device="cpu")
    assert emb.embedder.query_instruction is None
    np.testing.assert_allclose(emb.embed_query(QUERY), emb.embed_documents([QUERY])[0], atol=1e-6)
    np.testing.assert_allclose(emb.embed_query(QUERY), Embedder(m3_path, device="cpu").encode([QUERY]).dense[0],
                               atol=1e-6)


def test_vectors_are_python_floats_and_normalised(dense_path: str) -> None:
    emb = BGEEmbeddings(model_name=dense_path, device="cpu")
    vectors = emb.embed_documents(DOCS)
    assert len(vectors) == len(DOCS)
    assert all(type(x) is float for v in vectors for x in v)
    assert all(len(v) == emb.embedder.dim for v in vectors)
    assert all(math.isclose(np.linalg.norm(v), 1.0, rel_tol=1e-5) for v in vectors)
    assert emb.embed_documents([]) == []

    raw = BGEEmbeddings(model_name=dense_path, device="cpu", normalize=False)
    raw_vectors = np.asarray(raw.embed_documents(DOCS[:2]))
    np.testing.assert_allclose(raw_vectors, Embedder(dense_path, device="cpu", normalize=False).encode(DOCS[:2]).dense,
                               atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw_vectors, axis=1), 1.0, atol=1e-3)


async def test_bad_input_raises_type_error_naming_the_index(dense_path: str) -> None:
    emb = BGEEmbeddings(model_name=dense_path, device="cpu")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        emb.embed_documents(["fine", 3, "also fine"])
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        await emb.aembed_documents([None])
    with pytest.raises(TypeError, match="list of str"):
        emb.embed_documents("a bare string")
    with pytest.raises(TypeError, match="must be str"):
        emb.embed_query(b"bytes")
    with pytest.raises(TypeError, match="must be str"):
        await emb.aembed_query(["a list"])


def test_over_long_text_truncated_or_rejected(dense_path: str) -> None:
    long_text = " ".join(DOCS[0] for _ in range(40))
    cut = BGEEmbeddings(model_name=dense_path, device="cpu", max_length=16)
    assert len(cut.embed_documents([long_text])[0]) == cut.embedder.dim
    strict = BGEEmbeddings(model_name=dense_path, device="cpu", max_length=16, truncate=False)
    with pytest.raises(ValueError, match="index 1"):
        strict.embed_documents(["short", long_text])


def test_construction_fails_early(tmp_path, dense_path: str, cross_encoder_path: str) -> None:
    with pytest.raises(ModelLoadError):
        BGEEmbeddings(model_name=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="Reranker"):
        BGEEmbeddings(model_name=cross_encoder_path, device="cpu")
    with pytest.raises(ValidationError, match="Extra inputs"):
        BGEEmbeddings(model_name=dense_path, batch_size=8)
    core = Embedder(dense_path, device="cpu")
    with pytest.raises(ValueError, match="device and dtype"):
        BGEEmbeddings(model_name=core, device="cpu")


def test_one_model_shared(m3_path: str) -> None:
    dense = BGEEmbeddings(model_name=m3_path, device="cpu")
    sparse = BGEM3SparseEmbeddings(model_name=m3_path, device="cpu")
    assert dense.embedder.loaded is sparse.embedder.loaded
    assert BGEEmbeddings(model_name=Path(m3_path), device="cpu").embedder.loaded is dense.embedder.loaded
    core = Embedder(m3_path, device="cpu")
    assert BGEEmbeddings(model_name=core).embedder is core  # a loaded Embedder is used as it is
    wrapped = BGEEmbeddings(model_name=core, query_instruction="Q: ")
    assert wrapped.embedder.loaded is core.loaded and wrapped.embedder.query_instruction == "Q: "


async def test_event_loop_stays_responsive(dense_path: str) -> None:
    emb = BGEEmbeddings(model_name=dense_path, device="cpu")
    # A typical ingest batch: 600 chunks of ~500 tokens (a few seconds on the tiny model on 2 cores).
    words = " ".join(CORPUS * 8).split()
    texts = [" ".join([str(i), *words[i % 50 : i % 50 + 180]]) for i in range(600)]
    tick, lags = 0.005, []
    done = asyncio.Event()

    async def heartbeat() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(tick)
            lags.append(time.perf_counter() - start - tick)

    # A full garbage collection stops every thread, whoever triggers it; collect the garbage earlier
    # tests left behind now so the measurement shows only what aembed_documents does to the loop.
    gc.collect()
    beat = asyncio.create_task(heartbeat())
    started = time.perf_counter()
    vectors = await emb.aembed_documents(texts)
    elapsed = time.perf_counter() - started
    done.set()
    await beat

    assert len(vectors) == len(texts)
    assert elapsed > 0.5, f"batch took only {elapsed:.2f} s; too short to show anything"
    assert len(lags) > elapsed / 0.05, f"only {len(lags)} heartbeats in {elapsed:.2f} s"
    assert max(lags) < 0.050, f"event loop stalled {max(lags) * 1000:.0f} ms"
