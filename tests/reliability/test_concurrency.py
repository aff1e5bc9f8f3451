"""Concurrency: many threads on one shared model give serial results; async calls never stall the event loop.

Threads: 16 threads × 100 calls, on BGE-M3 weights shared by core and every adapter (one loaded copy),
plus a shared reranker. Calls vary `max_length`, which changes the HF fast tokenizer's truncation
settings, the mutation behind its "Already borrowed" error when two threads use one tokenizer. Results
must equal the serial ones.

Async: 200 concurrent calls through each framework's async API while a 5 ms ticker measures how late
the event loop wakes it. The loop must never be late by 50 ms or more.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from bge_core import Embedder, Reranker

THREADS, CALLS = 16, 100
TEXTS = [
    "BGE models turn text into vectors for retrieval.",
    "The giant panda is a bear native to south central China.",
    "大熊猫是中国特有的熊科动物，主要以竹子为食。",
    "مرحبا بالعالم، البحث الدلالي يستخدم المتجهات.",
    "Emoji are text too 🐼🎋🔎✨",
    "",
    " ".join(["Milvus is a vector database built for similarity search."] * 12),
]


def as_array(result: Any) -> np.ndarray:
    """Any call's result as one flat float array (sparse rows as sorted (id, weight) pairs)."""
    if isinstance(result, dict):
        return np.array([x for k in sorted(result) for x in (k, result[k])], dtype=np.float64)
    if isinstance(result, list) and result and isinstance(result[0], dict):
        return np.concatenate([as_array(r) for r in result]) if result else np.zeros(0)
    return np.asarray(result, dtype=np.float64).ravel()


@pytest.fixture(scope="module")
def shared(m3_path, cross_encoder_path):
    """One BGE-M3 and one reranker, and adapter objects of every framework on those same weights."""
    from haystack.utils import ComponentDevice

    from bge_haystack import BGESparseTextEmbedder, BGETextEmbedder
    from bge_langchain import BGEEmbeddings, BGEM3SparseEmbeddings
    from bge_llamaindex import BGEEmbedding
    from bge_milvus import BGEM3EmbeddingFunction

    m3 = Embedder(m3_path, device="cpu")
    cpu = ComponentDevice.from_str("cpu")
    haystack_dense = BGETextEmbedder(model=m3, device=cpu)
    haystack_sparse = BGESparseTextEmbedder(model=m3, device=cpu)
    haystack_dense.warm_up()
    haystack_sparse.warm_up()
    return {
        "m3": m3,
        "core": Embedder(m3, reuse_outputs=False),
        "reranker": Reranker(cross_encoder_path, device="cpu"),
        "langchain": BGEEmbeddings(model_name=m3),
        "langchain_sparse": BGEM3SparseEmbeddings(model_name=m3),
        "llamaindex": BGEEmbedding(m3),
        "haystack": haystack_dense,
        "haystack_sparse": haystack_sparse,
        "milvus": BGEM3EmbeddingFunction(m3),
    }


def calls(shared: dict[str, Any]) -> list[Callable[[int], Any]]:
    """Call kinds; call k of a thread runs kind k % len, on input k (deterministic per k)."""
    def pick(k: int, n: int = 3) -> list[str]:
        return [TEXTS[(k + j) % len(TEXTS)] for j in range(1 + k % n)]

    core, rr = shared["core"], shared["reranker"]
    return [
        lambda k: [core.encode(pick(k), sparse=True, max_length=16 + 8 * (k % 4)).dense,
                   core.encode(pick(k), dense=False, sparse=True, max_length=16 + 8 * (k % 4)).lexical_weights],
        lambda k: core.encode(pick(k), colbert=True, max_length=24).colbert_vectors,
        lambda k: rr.score([(TEXTS[k % len(TEXTS)], t) for t in pick(k)], max_length=20 + 10 * (k % 3)),
        lambda k: shared["langchain"].embed_documents(pick(k)),
        lambda k: shared["langchain_sparse"].embed_query(TEXTS[k % len(TEXTS)]),
        lambda k: shared["llamaindex"].get_text_embedding_batch(pick(k)),
        lambda k: shared["haystack"].run(TEXTS[k % len(TEXTS)])["embedding"],
        lambda k: shared["haystack_sparse"].run(TEXTS[k % len(TEXTS)])["sparse_embedding"].values,
        lambda k: shared["milvus"](pick(k))["sparse"].toarray(),
    ]


def flatten(result: Any) -> np.ndarray:
    if isinstance(result, list) and result and isinstance(result[0], (np.ndarray, list, dict)):
        return np.concatenate([flatten(r) for r in result])
    return as_array(result)


@pytest.mark.timeout(300)
def test_16_threads_x_100_calls_on_one_shared_model_equal_serial_calls(shared):
    kinds = calls(shared)
    # Serial results for every distinct call.
    period = 252  # lcm of the periods of kind (9), text offset (7), batch size (3) and max_length (4)
    serial = {k: flatten(kinds[k % len(kinds)](k)) for k in range(period)}
    failures: list[str] = []
    start = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        start.wait()  # all threads begin together: maximal contention
        for c in range(CALLS):
            k = (t * 37 + c) % period
            try:
                got = flatten(kinds[k % len(kinds)](k))
            except Exception as error:  # noqa: BLE001 - every failure is collected and reported below
                failures.append(f"thread {t} call {c}: {type(error).__name__}: {error}")
                continue
            # Results from BGE-M3's memo were computed in another batch: equal to float32 rounding
            # (see test_determinism); everything else is bitwise equal.
            if got.shape != serial[k].shape or not np.allclose(got, serial[k], rtol=0, atol=1e-6):
                failures.append(f"thread {t} call {c} (kind {k % len(kinds)}): differs from the serial result")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, "\n".join(failures[:10])


# -- async ------------------------------------------------------------------------------------------

ASYNC_CALLS = 200
#: Calls started per loop iteration. Starting all 200 in one iteration would run 200 framework prologues
#: back to back before the loop can wake the ticker (LlamaIndex opens an instrumentation span and creates
#: events with fresh uuids per call): that is the caller's burst, not the adapter. Ten at a time still
#: keeps all 200 in flight together (asserted below).
WAVE = 10
MAX_LAG = 0.050


async def measure(make: Callable[[int], Awaitable[Any]]) -> tuple[list[Any], float, int, int]:
    """Run ASYNC_CALLS calls concurrently; return their results, the ticker's worst lag, its tick count and
    the most calls in flight at once."""
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - before - 0.005)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    tasks: list[asyncio.Task] = []
    most = 0
    for i in range(ASYNC_CALLS):
        tasks.append(asyncio.ensure_future(make(i)))
        if i % WAVE == WAVE - 1:
            await asyncio.sleep(0)
            most = max(most, sum(not t.done() for t in tasks))
    results = await asyncio.gather(*tasks)
    done.set()
    await tick
    return results, max(lags), len(lags), most


def framework_calls(framework: str, m3_path: str, cross_encoder_path: str) -> tuple[Callable, Callable[[Any], None]]:
    """``make(i)`` → an awaitable of call i through the framework's async API, and a check of its result."""
    counter = itertools.count()

    def fresh() -> str:  # unseen texts: every call runs the model (no memo hit)
        return f"text {next(counter)} about pandas, bamboo and vector search"

    if framework == "langchain":
        from langchain_core.documents import Document

        from bge_langchain import BGEEmbeddings, BGEM3SparseEmbeddings, BGEReranker

        dense = BGEEmbeddings(model_name=m3_path, device="cpu")
        sparse = BGEM3SparseEmbeddings(model_name=m3_path, device="cpu")
        reranker = BGEReranker(model_name=cross_encoder_path, device="cpu", top_n=None)
        makers = [
            lambda: dense.aembed_query(fresh()),
            lambda: dense.aembed_documents([fresh(), fresh()]),
            lambda: sparse.aembed_query(fresh()),
            lambda: sparse.aembed_documents([fresh(), fresh()]),
            lambda: reranker.acompress_documents([Document(page_content=fresh()), Document(page_content=fresh())],
                                                 fresh()),
        ]
    elif framework == "llamaindex":
        from llama_index.core.schema import NodeWithScore, TextNode

        from bge_llamaindex import BGEEmbedding, BGEM3SparseEmbeddingFunction, BGEReranker

        dense = BGEEmbedding(m3_path, device="cpu")
        sparse = BGEM3SparseEmbeddingFunction(dense.embedder)
        reranker = BGEReranker(cross_encoder_path, device="cpu", top_n=5)
        makers = [
            lambda: dense.aget_query_embedding(fresh()),
            lambda: dense.aget_text_embedding_batch([fresh(), fresh()]),
            lambda: sparse.async_encode_queries([fresh()]),
            lambda: sparse.async_encode_documents([fresh(), fresh()]),
            lambda: reranker.apostprocess_nodes(
                [NodeWithScore(node=TextNode(text=fresh())), NodeWithScore(node=TextNode(text=fresh()))],
                query_str=fresh()),
        ]
    else:
        from haystack import Document
        from haystack.utils import ComponentDevice

        from bge_haystack import (
            BGEDocumentEmbedder,
            BGERanker,
            BGESparseDocumentEmbedder,
            BGESparseTextEmbedder,
            BGETextEmbedder,
        )

        cpu = ComponentDevice.from_str("cpu")
        parts = [
            BGETextEmbedder(model=m3_path, device=cpu),
            BGEDocumentEmbedder(model=m3_path, device=cpu, progress_bar=False),
            BGESparseTextEmbedder(model=m3_path, device=cpu),
            BGESparseDocumentEmbedder(model=m3_path, device=cpu, progress_bar=False),
            BGERanker(model=cross_encoder_path, device=cpu),
        ]
        for part in parts:
            part.warm_up()
        text, docs, sparse_text, sparse_docs, ranker = parts
        makers = [
            lambda: text.run_async(fresh()),
            lambda: docs.run_async([Document(content=fresh()), Document(content=fresh())]),
            lambda: sparse_text.run_async(fresh()),
            lambda: sparse_docs.run_async([Document(content=fresh())]),
            lambda: ranker.run_async(query=fresh(), documents=[Document(content=fresh()), Document(content=fresh())]),
        ]

    def check(result: Any) -> None:
        assert result is not None
        if isinstance(result, dict):  # Haystack
            assert result, "empty component output"
        elif isinstance(result, list):
            assert result, "empty result"

    return (lambda i: makers[i % len(makers)]()), check


@pytest.mark.timeout(300)
@pytest.mark.parametrize("framework", ["langchain", "llamaindex", "haystack"])
async def test_200_concurrent_async_calls_never_block_the_event_loop(framework, m3_path, cross_encoder_path):
    """Every call completes and a 5 ms ticker is never 50 ms late.

    `gc.collect()` then `gc.freeze()` first: the test process holds ~500k objects once every framework is
    imported, and a full collection of them, triggered by whichever thread allocates next, holds the GIL
    for 100 ms and more, stalling every thread of the process, the event loop included. That pause
    belongs to the process, not to the adapters; frozen, only objects made during the run are scanned.
    """
    make, check = framework_calls(framework, m3_path, cross_encoder_path)
    await measure(make)  # warm up: thread pool, lazy imports, first forwards
    gc.collect()
    gc.freeze()
    worst, ticks, rounds = 0.0, 0, 0
    try:
        # A fast machine may finish 200 calls in a few ticks: measure more rounds until the ticker has run.
        while ticks <= 20 and rounds < 10:
            results, lag, round_ticks, most = await measure(make)
            worst, ticks, rounds = max(worst, lag), ticks + round_ticks, rounds + 1
            assert len(results) == ASYNC_CALLS
            for result in results:
                check(result)
            assert most >= ASYNC_CALLS // 2, f"only {most} calls were ever in flight together"
    finally:
        gc.unfreeze()
    assert ticks > 20, "the runs were too short to measure the loop"
    assert worst < MAX_LAG, f"the event loop was blocked for {worst * 1000:.0f} ms"
