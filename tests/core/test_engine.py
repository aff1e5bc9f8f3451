"""The engine: token-budget batches, input order, batch independence, OOM split, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from bge_core import Embedder, Reranker
from bge_core.engine import schedule


def test_token_budget_closes_batches_by_padded_cost():
    lengths = [10, 3, 8, 8, 2, 1]
    order = schedule.length_order(lengths)
    assert order == [0, 2, 3, 1, 4, 5]
    batches = list(schedule.token_budget_batches(order, lengths, token_budget=20, padded=True))
    assert batches == [[0, 2], [3, 1], [4, 5]]
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 20
    packed = list(schedule.token_budget_batches(order, lengths, token_budget=20, padded=False))
    assert all(sum(lengths[i] for i in b) <= 20 for b in packed)
    assert sorted(i for b in packed for i in b) == list(range(6))


def test_an_item_longer_than_the_budget_runs_alone():
    assert list(schedule.token_budget_batches([0, 1], [50, 5], token_budget=20, padded=True)) == [[0], [1]]


def _padded_cost(parts: list[list[int]], lengths: list[int], overhead: int) -> int:
    return sum(overhead + len(part) * max(lengths[i] for i in part) for part in parts)


def test_a_padded_batch_is_cut_where_the_padding_saved_outweighs_the_extra_batches():
    """Against every way of cutting the sorted batch into consecutive parts (random small cases): the
    parts chosen cost the least, keep the order, and lose no index."""
    import itertools
    import random

    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 8)
        lengths = [rng.choice([2, 3, 5, 9, 17, 40, 41]) for _ in range(n)]
        overhead = rng.choice([0, 4, 16, 64, 1000])
        batch = schedule.length_order(lengths)
        parts = schedule.split_padding(batch, lengths, overhead)
        assert [i for part in parts for i in part] == batch
        least = min(
            _padded_cost([batch[a:b] for a, b in zip((0, *cuts), (*cuts, n))], lengths, overhead)
            for k in range(n) for cuts in itertools.combinations(range(1, n), k)
        )
        assert _padded_cost(parts, lengths, overhead) == least


def test_token_budget_batches_with_an_overhead_cut_only_inside_the_budgets_batches():
    lengths = [40, 38, 6, 5, 5, 4]
    order = schedule.length_order(lengths)
    greedy = list(schedule.token_budget_batches(order, lengths, token_budget=200, padded=True))
    assert greedy == [[0, 1, 2, 3, 4], [5]]
    cut = list(schedule.token_budget_batches(order, lengths, token_budget=200, padded=True, batch_overhead=16))
    assert cut == [[0, 1], [2, 3, 4], [5]]
    assert list(schedule.token_budget_batches(order, lengths, token_budget=200, padded=False,
                                              batch_overhead=16)) == [order]  # packed batches have no padding


def test_a_cpu_call_of_mixed_lengths_runs_in_parts_with_the_same_vectors(m3_path):
    """Padded batches on the CPU: two long texts and many short ones run as two batches instead of one
    padded to the longest, and every vector is the one the single batch gives."""
    model = Embedder(m3_path, device="cpu", reuse_outputs=False)
    engine = model.loaded.engine
    assert not engine.packed and engine.batch_overhead is not None
    texts = ["a long passage about search " * 6, "another long passage on retrieval " * 5] + \
        [f"short {i}" for i in range(10)]
    engine.batch_overhead = None
    before = engine.forward_calls
    whole = model.encode(texts, sparse=True)
    assert engine.forward_calls - before == 1
    engine.batch_overhead = 32
    before = engine.forward_calls
    parts = model.encode(texts, sparse=True)
    assert engine.forward_calls - before == 2
    np.testing.assert_allclose(parts.dense, whole.dense, atol=1e-5)
    for a, b in zip(parts.lexical_weights, whole.lexical_weights):
        assert a.keys() == b.keys()
        assert np.allclose(list(a.values()), list(b.values()), atol=1e-5)


def test_the_cycle_collector_pauses_for_a_call_and_resumes_as_it_was(m3_path, parity_texts, monkeypatch):
    import gc

    from bge_core.engine import runner

    seen = []
    original = runner.Engine.drive

    def drive(self, *args):
        seen.append(gc.isenabled())
        return original(self, *args)

    monkeypatch.setattr(runner.Engine, "drive", drive)
    model = Embedder(m3_path, device="cpu", reuse_outputs=False)
    assert gc.isenabled()
    model.encode(parity_texts, sparse=True)
    assert seen == [False] and gc.isenabled()
    gc.disable()  # a caller that turned it off keeps it off
    try:
        model.encode(parity_texts)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(ValueError), runner.cycle_collection_paused():  # resumed after an error too
        raise ValueError
    assert gc.isenabled()


def test_results_come_back_in_input_order_and_do_not_depend_on_the_batch(m3_path, parity_texts):
    m3 = Embedder(m3_path, device="cpu", reuse_outputs=False)
    alone = np.stack([m3.encode([t], sparse=True).dense[0] for t in parity_texts])
    together = m3.encode(parity_texts, sparse=True)
    np.testing.assert_allclose(together.dense, alone, atol=1e-5)
    tiny_batches = Embedder(m3, batch_tokens=64, reuse_outputs=False).encode(parity_texts[::-1], sparse=True)
    np.testing.assert_allclose(tiny_batches.dense[::-1], alone, atol=1e-5)
    for a, b in zip(tiny_batches.lexical_weights[::-1], together.lexical_weights, strict=True):
        assert set(a) == set(b)
        assert all(abs(a[k] - b[k]) < 1e-5 for k in a)


def test_out_of_memory_splits_the_batch_and_gives_the_same_results(m3_path, parity_texts, monkeypatch):
    m3 = Embedder(m3_path, device="cpu", reuse_outputs=False)
    expected = m3.encode(parity_texts).dense
    family = m3.loaded.family
    real_forward = family.forward
    sizes = []

    def forward_with_memory_cap(batch, options):
        sizes.append(batch.input_ids.shape[0])
        if batch.input_ids.shape[0] > 2:  # fault injection: a device that only fits two rows
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(batch, options)

    monkeypatch.setattr(family, "forward", forward_with_memory_cap)
    got = m3.encode(parity_texts).dense
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert max(sizes) > 2 and sizes[-1] <= 2


def test_other_errors_propagate_unchanged(m3_path, monkeypatch):
    m3 = Embedder(m3_path, device="cpu", reuse_outputs=False)
    calls = []

    def broken(batch, options):
        calls.append(1)
        raise RuntimeError("shape mismatch (injected)")

    monkeypatch.setattr(m3.loaded.family, "forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        m3.encode(["a", "b", "c"])
    assert len(calls) == 1  # no retry, no split


def test_many_threads_share_one_model_safely(m3_path, parity_texts):
    m3 = Embedder(m3_path, device="cpu", reuse_outputs=False)
    expected = m3.encode(parity_texts, sparse=True)
    failures = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(10):
            idx = rng.permutation(len(parity_texts))[:3]
            out = m3.encode([parity_texts[i] for i in idx], sparse=True)
            if not np.allclose(out.dense, expected.dense[idx], atol=1e-5):
                failures.append(seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_dense_then_sparse_for_the_same_texts_costs_one_forward(m3_path, parity_texts):
    m3 = Embedder(m3_path, device="cpu")
    texts = [t + " (memo test)" for t in parity_texts]
    engine = m3.loaded.engine
    before = engine.rows_forwarded
    dense = m3.encode(texts).dense
    sparse = m3.encode(texts, dense=False, sparse=True).lexical_weights
    assert engine.rows_forwarded - before == len(texts)
    fresh = Embedder(m3, reuse_outputs=False).encode(texts, sparse=True)
    np.testing.assert_allclose(dense, fresh.dense, atol=1e-6)
    assert sparse == fresh.lexical_weights


def test_on_batch_sees_every_output_once_as_run_returns_it(m3_path, parity_texts):
    engine = Embedder(m3_path, device="cpu", reuse_outputs=False).loaded.engine
    seen: dict[int, object] = {}
    batches = []

    def on_batch(indices, outputs):
        batches.append(len(indices))
        for index, output in zip(indices, outputs, strict=True):
            assert index not in seen
            seen[index] = output

    results = engine.run(parity_texts, max_length=64, options={"dense": True}, token_budget=64, on_batch=on_batch)
    assert len(batches) > 1 and sorted(seen) == list(range(len(parity_texts)))
    assert all(seen[i] is row for i, row in enumerate(results))


def test_remembered_and_fresh_dense_vectors_land_in_their_own_rows(m3_path, parity_texts):
    """With the memo, part of a call's dense matrix comes from remembered rows and part from the engine."""
    want = Embedder(m3_path, device="cpu", reuse_outputs=False).encode(parity_texts).dense
    model = Embedder(m3_path, device="cpu", batch_tokens=64)
    model.loaded.memo.clear()
    model.encode(parity_texts[1::3])
    got = model.encode(parity_texts, sparse=True).dense
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.dtype == np.float32 and got.shape == want.shape


def _told_counts(n: int) -> tuple[list[int | None], list, object]:
    """A count per input, filled by an `on_tokens` hook that also records the order of events."""
    counts: list[int | None] = [None] * n
    events: list = []

    def on_tokens(indices, told):
        for index, count in zip(indices, told, strict=True):
            assert counts[index] is None, f"input {index} reported twice"
            counts[index] = count
            events.append(("tokens", index))

    return counts, events, on_tokens


def test_on_tokens_reports_each_inputs_token_count_before_its_forward(m3_path, parity_texts):
    """One call over several chunks (so tokenized in a helper thread): every input is reported once, with
    the count `count_tokens` gives (truncated at max_length), before `on_batch` sees its output."""
    from bge_core.engine import runner

    model = Embedder(m3_path, device="cpu", reuse_outputs=False)
    texts = [f"{t} #{i}" for i, t in enumerate(parity_texts * 3)] + ["word " * 400]
    counts, events, on_tokens = _told_counts(len(texts))
    engine = model.loaded.engine
    chunk_chars, runner.FIRST_CHUNK_CHARS = runner.FIRST_CHUNK_CHARS, 200  # several chunks for a few texts
    try:
        assert len(runner._chunks(texts)) > 2
        engine.run(texts, max_length=64, options={"dense": True}, token_budget=128, on_tokens=on_tokens,
                   on_batch=lambda indices, _: events.extend(("batch", i) for i in indices))
    finally:
        runner.FIRST_CHUNK_CHARS = chunk_chars
    assert counts == model.count_tokens(texts, max_length=64)
    assert counts[-1] == 64
    for index in range(len(texts)):
        assert events.index(("tokens", index)) < events.index(("batch", index))


def test_encode_reports_tokens_with_the_instruction_and_at_input_positions_past_the_memo(m3_path, parity_texts):
    model = Embedder(m3_path, device="cpu", query_instruction="Represent this: ")
    model.loaded.memo.clear()
    texts = [f"{t} (on_tokens)" for t in parity_texts]
    counts, _, on_tokens = _told_counts(len(texts))
    model.encode_queries(texts, on_tokens=on_tokens)
    assert counts == model.count_tokens([f"Represent this: {t}" for t in texts], max_length=model.max_length)
    model.encode(texts[::2])  # remembered now: only the others are tokenized again
    counts, _, on_tokens = _told_counts(len(texts))
    model.encode(texts, sparse=True, on_tokens=on_tokens)
    fresh = model.count_tokens(texts, max_length=model.max_length)
    assert counts == [None if i % 2 == 0 else fresh[i] for i in range(len(texts))]
    states_counts, _, on_tokens = _told_counts(3)
    states = model.encode_token_states(texts[:3], on_tokens=on_tokens)
    assert states_counts == [len(s) for s in states]


def test_reranker_reports_each_pairs_tokens(cross_encoder_path):
    from transformers import AutoTokenizer

    reranker = Reranker(cross_encoder_path, device="cpu")
    pairs = [("what is a panda", "a bear"), ("q", "x " * 600), ("大熊猫", "竹子")]
    counts, _, on_tokens = _told_counts(len(pairs))
    reranker.score(pairs, on_tokens=on_tokens, max_length=128)
    tokenizer = AutoTokenizer.from_pretrained(cross_encoder_path)
    want = tokenizer([q for q, _ in pairs], [p for _, p in pairs], truncation="only_second", max_length=128)
    assert counts == [len(ids) for ids in want["input_ids"]]
