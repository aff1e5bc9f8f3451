"""The padding-free (packed) path, run on CPU: the same outputs as padded batches.

On CUDA the packed path uses PyTorch's varlen flash kernel; on CPU the same packing runs each
sequence through SDPA, which tests the packing, position ids and every head on packed tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bge_core import Embedder, Reranker
from bge_core.models.encoder import FusedEncoder, fused_encoder


def test_m3_packed_matches_padded(m3_path, parity_texts):
    padded = Embedder(m3_path, device="cpu", packed=False, reuse_outputs=False)
    packed = Embedder(m3_path, device="cpu", packed=True, reuse_outputs=False)
    assert packed.loaded.engine.packed and not padded.loaded.engine.packed
    assert packed.loaded is not padded.loaded
    a = padded.encode(parity_texts, sparse=True, colbert=True, max_length=64)
    b = packed.encode(parity_texts, sparse=True, colbert=True, max_length=64)
    np.testing.assert_allclose(b.dense, a.dense, atol=1e-5)
    for x, y in zip(a.lexical_weights, b.lexical_weights, strict=True):
        assert set(x) == set(y)
        assert max((abs(x[k] - y[k]) for k in x), default=0) < 1e-4
    for x, y in zip(a.colbert_vectors, b.colbert_vectors, strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(y, x, atol=1e-4)


def test_dense_and_decoder_packed_match_padded(dense_path, llm_embedder_path, parity_texts):
    for path, kwargs in [(dense_path, {}), (dense_path, {"pooling": "mean"}), (llm_embedder_path, {})]:
        a = Embedder(path, device="cpu", packed=False, **kwargs).encode(parity_texts).dense
        b = Embedder(path, device="cpu", packed=True, **kwargs).encode(parity_texts).dense
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_cross_encoder_packed_matches_padded(cross_encoder_path, parity_texts):
    pairs = [(q, p) for q in parity_texts[:3] for p in parity_texts]
    a = Reranker(cross_encoder_path, device="cpu", packed=False).score(pairs)
    b = Reranker(cross_encoder_path, device="cpu", packed=True).score(pairs)
    np.testing.assert_allclose(b, a, atol=1e-4)


def test_chunked_tokenization_keeps_input_order(m3_path, parity_texts, monkeypatch):
    from bge_core.engine import runner

    texts = [f"{t} #{i}" for i, t in enumerate(parity_texts * 3)]
    expected = Embedder(m3_path, device="cpu", packed=True, reuse_outputs=False).encode(texts, sparse=True)
    # Several chunks (growing from one text to 5), tokenized ahead in a background thread.
    monkeypatch.setattr(runner, "FIRST_CHUNK_CHARS", 1)
    monkeypatch.setattr(runner, "CHUNK", 5)
    assert [len(part) for _, part in runner._chunks(texts)][:2] == [1, 1]
    assert max(len(part) for _, part in runner._chunks(texts)) == 5
    model = Embedder(m3_path, device="cpu", packed=True, reuse_outputs=False)
    got = model.encode(texts, sparse=True)
    # A chunk's last batch under half the budget is topped up from the next chunk (except the first
    # chunk's, so the device starts at once): no batch between the first and the last is that small.
    batches = list(model.loaded.engine.batches(texts, 64, {}, True, 200))
    assert sorted(i for indices, _ in batches for i in indices) == list(range(len(texts)))
    assert all(sum(len(row.ids) for row in rows) >= 100 for _, rows in batches[1:-1])
    np.testing.assert_allclose(got.dense, expected.dense, atol=1e-5)
    for a, b in zip(got.lexical_weights, expected.lexical_weights, strict=True):
        assert set(a) == set(b) and all(abs(a[k] - b[k]) < 1e-5 for k in a)


def test_device_pool_spreads_batches_and_keeps_order(m3_path, parity_texts):
    """A device list starts one worker process per device; batches are pulled by both and every
    output (dense, lexical dicts, ColBERT arrays through shared memory) lands at its input index."""
    from bge_core.engine.workers import ProcessDevicePool

    texts = [f"{t} #{i}" for i, t in enumerate(parity_texts * 4)]
    single = Embedder(m3_path, device="cpu", reuse_outputs=False)
    pool = Embedder(m3_path, device=["cpu", "cpu"], reuse_outputs=False, batch_tokens=64)
    engine = pool.loaded.engine
    assert isinstance(engine, ProcessDevicePool)
    before = engine.forward_calls
    told: list[tuple[int, int]] = []
    got = pool.encode(texts, sparse=True, colbert=True,
                      on_tokens=lambda indices, counts: told.extend(zip(indices, counts, strict=True)))
    assert engine.forward_calls - before > 2  # many small batches, pulled by two workers
    # Token counts come from the workers' own tokenization, one report per input.
    assert sorted(told) == list(enumerate(single.count_tokens(texts, max_length=single.max_length)))
    assert sum(engine.rows_by_worker) == engine.rows_forwarded >= len(texts)
    want = single.encode(texts, sparse=True, colbert=True)
    np.testing.assert_allclose(got.dense, want.dense, atol=1e-5)
    for a, b in zip(got.colbert_vectors, want.colbert_vectors, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(got.lexical_weights, want.lexical_weights, strict=True):
        assert set(a) == set(b) and all(abs(a[k] - b[k]) < 1e-5 for k in a)
    # The compat classes' lexical format (built in this process from the workers' arrays).
    flag = {"reading_order": True, "flagembedding_types": True}
    got, want = (m.encode(texts[:16], dense=False, sparse=True, _options=flag) for m in (pool, single))
    for a, b in zip(got.lexical_weights, want.lexical_weights, strict=True):
        assert list(a) == list(b) and all(type(k) is str and type(a[k]) is np.float32 for k in a)


def test_device_pool_errors_reach_the_caller_and_workers_stay_usable(dense_path, parity_texts):
    pool = Embedder(dense_path, device=["cpu", "cpu"], batch_tokens=64)
    want = Embedder(dense_path, device="cpu").encode(parity_texts).dense
    with pytest.raises(ValueError, match="unknown pooling"):  # raised inside a worker
        pool.encode(parity_texts * 4, _options={"pooling": "bogus"})
    with pytest.raises(ValueError, match="exceed max_length"):  # found while forming batches
        pool.encode(["word " * 200], max_length=16, truncate=False)
    np.testing.assert_allclose(pool.encode(parity_texts).dense, want, atol=1e-5)


def test_a_dead_worker_is_an_error_and_loading_again_starts_fresh(dense_path, parity_texts):
    pool = Embedder(dense_path, device=["cpu", "cpu"], batch_tokens=64)
    engine = pool.loaded.engine
    engine._processes[1].kill()
    engine._processes[1].join()
    with pytest.raises(RuntimeError, match="exited"):
        pool.encode(parity_texts * 4)
    with pytest.raises(RuntimeError, match="load the model again"):
        pool.encode(parity_texts)
    again = Embedder(dense_path, device=["cpu", "cpu"], batch_tokens=64)
    assert again.loaded.engine is not engine
    want = Embedder(dense_path, device="cpu").encode(parity_texts).dense
    np.testing.assert_allclose(again.encode(parity_texts).dense, want, atol=1e-5)


def test_device_pool_without_shared_memory_pipes_outputs(m3_path, parity_texts, monkeypatch):
    """Where /dev/shm is small (containers), workers pickle outputs through the pipe instead."""
    from bge_core.loading import clear_cache

    monkeypatch.setenv("BGE_CORE_SHARED_MEMORY", "0")  # read by the workers when they start
    clear_cache()
    try:
        got = Embedder(m3_path, device=["cpu", "cpu"], reuse_outputs=False, batch_tokens=64).encode(
            parity_texts, sparse=True, colbert=True)
    finally:
        clear_cache()
    want = Embedder(m3_path, device="cpu", reuse_outputs=False).encode(parity_texts, sparse=True, colbert=True)
    np.testing.assert_allclose(got.dense, want.dense, atol=1e-5)
    for a, b in zip(got.colbert_vectors, want.colbert_vectors, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_ring_without_room_is_an_error_that_leaves_no_file(monkeypatch):
    """posix_fallocate reserves the ring's pages up front: a full /dev/shm fails at creation
    (the worker then pipes its outputs) instead of killing the worker with SIGBUS later."""
    import glob
    import multiprocessing
    import os

    from bge_core.engine import transfer

    def no_room(fd, offset, size):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    before = set(glob.glob("/dev/shm/bge-core-*"))
    with pytest.raises(OSError, match="No space"):
        transfer.OutputRing.create(1 << 20, multiprocessing.get_context("spawn").RawValue("Q", 0))
    assert set(glob.glob("/dev/shm/bge-core-*")) == before


def test_workers_take_small_chunks_first_and_last():
    """Each worker starts on a small chunk; chunks shrink towards the end so the devices finish together."""
    from bge_core.engine.workers import FIRST_CHUNK_CHARS, MAX_SHARE_CHARS, _shares

    items = ["x" * 1000] * 20_000  # 20M characters
    shares = list(_shares(items, workers=2))
    assert [i for start, part, _ in shares for i in range(start, start + len(part))] == list(range(len(items)))
    assert all(part == items[start : start + len(part)] for start, part, _ in shares)
    sizes = [sum(map(len, part)) for _, part, _ in shares]
    assert sizes[0] <= FIRST_CHUNK_CHARS + 1000 and sizes[1] <= FIRST_CHUNK_CHARS + 1000
    assert max(sizes) <= MAX_SHARE_CHARS + 1000 and max(sizes) > 4 * sizes[0]
    assert sizes[-2] < max(sizes) / 4  # the tail is cut finer
    tail = [in_tail for _, _, in_tail in shares]
    assert tail[-1] and not any(tail[:-8]) and tail == sorted(tail)  # only the last few chunks
    assert list(_shares([], workers=2)) == []
    assert [len(part) for _, part, _ in _shares(["short"] * 3, workers=2)] == [3]


def test_worker_outputs_round_trip_through_the_shared_memory_ring():
    import multiprocessing
    import threading

    from bge_core.engine.transfer import OutputRing, RingReader, pickled, read_message

    released = multiprocessing.get_context("spawn").RawValue("Q", 0)
    ring = OutputRing.create(1 << 20, released)
    reader = RingReader(ring.name, ring.size, released)
    try:
        outputs = [{"dense": np.arange(2048, dtype=np.float32), "weights": {5: 0.25}, "small": np.ones(3)},
                   np.arange(4096, dtype=np.float16).reshape(64, 64), None]
        message = ring.write(outputs)
        assert message[0] == "ring" and len(message[2]) == 2  # the two large arrays; the small one is pickled
        back = reader.read(message)
        np.testing.assert_array_equal(back[0]["dense"], outputs[0]["dense"])
        np.testing.assert_array_equal(back[1], outputs[1])
        assert back[1].dtype == np.float16 and back[0]["weights"] == {5: 0.25} and back[2] is None

        # A view travels as its own bytes; Fortran-ordered and strided arrays keep their layout and values.
        batch = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)
        message = ring.write([batch[3:9], np.asfortranarray(batch[:8]), batch[:, ::2]])
        assert [size for _, size in message[2]] == [batch[3:9].nbytes, batch[:8].nbytes]  # strided: pickled
        back = reader.read(message)
        for got, want in zip(back, [batch[3:9], batch[:8], batch[:, ::2]], strict=True):
            np.testing.assert_array_equal(got, want)
        assert back[1].flags.f_contiguous

        # The ring wraps around (a batch is never split at its end), and a full ring waits until
        # the reader has copied older batches out.
        pending = [ring.write([batch]) for _ in range(3)]
        starts = [message[2][0][0] for message in pending]
        assert starts == sorted(starts) and starts[-1] + 2 * batch.nbytes > ring.size  # no room for a fourth
        later: list = []
        writer = threading.Thread(target=lambda: later.append(ring.write([batch * 2])))
        writer.start()
        writer.join(timeout=0.3)
        assert writer.is_alive()  # no room until the reader copies out
        for message in pending:
            np.testing.assert_array_equal(reader.read(message)[0], batch)
        writer.join(timeout=5)
        assert later[0][2][0][0] == 0  # wrapped around to the ring's start
        np.testing.assert_array_equal(reader.read(later[0])[0], batch * 2)

        # Outputs larger than half the ring are pickled whole.
        big = np.zeros((200, 1024), dtype=np.float32)
        assert ring.write([big])[0] == "pickle" == pickled([big])[0]
        np.testing.assert_array_equal(read_message(ring.write([big]), None)[0], big)
    finally:
        ring.unlink()
        reader.close()


@pytest.mark.parametrize("family", ["m3", "dense", "cross_encoder"])
def test_fused_encoder_matches_transformers_on_packed_tokens(family, request, parity_texts, monkeypatch):
    """The fused encoder's plumbing (QKV concatenation, residuals, norms) on CPU in fp32; the compiled
    version runs on CUDA (tests/gpu)."""
    monkeypatch.setenv("BGE_CORE_COMPILE", "0")
    path = request.getfixturevalue(f"{family}_path")
    model = Reranker(path, device="cpu", packed=True) if family == "cross_encoder" else \
        Embedder(path, device="cpu", packed=True, reuse_outputs=False)
    engine = model.loaded.engine
    backbone = engine.family.backbone_module()
    # Fused forwards are for CUDA half precision; CPU keeps the transformers path.
    assert engine.family.fused_backbone is None and fused_encoder(backbone) is None
    texts = parity_texts if family != "cross_encoder" else [(parity_texts[0], t) for t in parity_texts]
    with torch.inference_mode():
        batch = engine._pack(engine.tokenize(texts, 64, {}))
        expected = engine.family.backbone_packed(batch)
        got = FusedEncoder(backbone)(batch)
    assert got.shape == expected.shape == (sum(batch.lengths), backbone.config.hidden_size)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["m3", "dense", "cross_encoder"])
def test_a_batch_travels_as_host_arrays_and_builds_the_same_rows_after_pickling(family, request, parity_texts):
    """Device workers send `HostOutputs` (arrays and a picklable build) and the calling process builds
    the rows: no family may hand the engine a build that does not pickle."""
    import pickle

    path = request.getfixturevalue(f"{family}_path")
    model = Reranker(path, device="cpu") if family == "cross_encoder" else \
        Embedder(path, device="cpu", reuse_outputs=False)
    engine = model.loaded.engine
    items = parity_texts if family != "cross_encoder" else [(parity_texts[0], t) for t in parity_texts]
    options = {"dense": True, "sparse": True, "colbert": True} if family == "m3" else {}
    with torch.inference_mode():
        host = engine._forward(engine.tokenize(items, 64, options), options).host_outputs()
    travelled = pickle.loads(pickle.dumps(host, protocol=5))
    assert travelled.arrays.keys() == host.arrays.keys()
    for got, want in zip(travelled.rows(), host.rows(), strict=True):
        if family == "m3":
            np.testing.assert_array_equal(got.dense, want.dense)
            np.testing.assert_array_equal(got.colbert_vectors, want.colbert_vectors)
            assert got.lexical_weights == want.lexical_weights
        else:
            np.testing.assert_array_equal(got, want)


def test_the_gelu_in_gemm_layer_computes_the_same_layer(monkeypatch):
    """The encoder layer with its feed-forward GELU in the up-projection GEMM (what CUDA half precision
    runs) against the plain layer, in float32 on CPU: the same layer (argument order, transposes). On
    CPU the op applies exact GELU; CUDA's epilogue uses the tanh form (tests/gpu compares it)."""
    monkeypatch.setenv("BGE_CORE_COMPILE", "0")
    from bge_core.models.encoder import POST_ATTENTION

    g = torch.Generator().manual_seed(0)
    d, f, tokens = 32, 128, 50

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    args = (rand(tokens, d, scale=1.0), rand(tokens, d, scale=1.0), rand(d, d), rand(d), 1 + rand(d), rand(d),
            rand(f, d), rand(f), rand(d, f), rand(d), 1 + rand(d), rand(d), 1e-5)
    exact, in_gemm = POST_ATTENTION(*args, False), POST_ATTENTION(*args, True)
    assert exact.shape == (tokens, d)
    torch.testing.assert_close(in_gemm, exact, atol=1e-5, rtol=1e-5)


def test_worker_process_runs_one_device_in_a_worker_and_small_calls_do_not_wait_for_more_chunks(m3_path,
                                                                                                parity_texts):
    """`worker_process=True` puts a single device's model in its own process (same outputs as in-process); a
    call's last chunk is marked, so a one-chunk call never waits NEXT_CHUNK_WAIT for chunks that won't come."""
    from bge_core.engine.workers import ProcessDevicePool

    single = Embedder(m3_path, device="cpu", reuse_outputs=False)
    isolated = Embedder(m3_path, device="cpu", reuse_outputs=False, worker_process=True)
    assert isinstance(isolated.loaded.engine, ProcessDevicePool) and isolated.loaded.engine.devices == ["cpu"]
    got, want = (m.encode(parity_texts, sparse=True) for m in (isolated, single))
    np.testing.assert_allclose(got.dense, want.dense, atol=1e-5)
    for a, b in zip(got.lexical_weights, want.lexical_weights, strict=True):
        assert set(a) == set(b) and all(abs(a[k] - b[k]) < 1e-5 for k in a)

    messages = []
    pool = isolated.loaded.engine
    real_put = pool._put
    pool._put = lambda message, stop: (messages.append(message), real_put(message, stop))[1]
    try:
        isolated.encode([parity_texts[0]])
        isolated.encode([f"{t} #{i}" for i, t in enumerate(parity_texts * 40)])
    finally:
        pool._put = real_put
    calls: dict[int, list[bool]] = {}
    for message in messages:
        calls.setdefault(message[1], []).append(message[6])
    assert [last for marks in calls.values() for last in marks].count(True) == len(calls) == 2
    assert all(marks[-1] and not any(marks[:-1]) for marks in calls.values())


@pytest.mark.parametrize("offset", [0, 2])
def test_small_batches_derive_positions_on_the_host_as_large_ones_do_on_the_device(offset):
    """A query-sized batch gets its offsets, positions and sequence ids from numpy; a passages batch from
    device kernels. Both give the same tensors, with the right dtypes, for one and many sequences."""
    from bge_core.engine.packing import derive_on_device, derive_on_host

    rng = np.random.default_rng(0)
    for n in (1, 2, 17, 64):
        lengths = rng.integers(1, 40, size=n)
        ids = rng.integers(0, 30_000, size=int(lengths.sum()))
        host = derive_on_host(ids, lengths, offset, torch.device("cpu"))
        device = derive_on_device(ids, lengths, offset, torch.device("cpu"))
        for a, b, dtype in zip(host, device, (torch.int64, torch.int64, torch.int64, torch.int32), strict=True):
            assert a.dtype == b.dtype == dtype
            assert torch.equal(a, b)
        ids_t, positions, seq_ids, cu = host
        assert ids_t.tolist() == ids.tolist()
        assert cu.tolist() == [0, *np.cumsum(lengths).tolist()]
        first = 0
        for i, length in enumerate(lengths.tolist()):
            assert positions[first : first + length].tolist() == list(range(offset, offset + length))
            assert set(seq_ids[first : first + length].tolist()) == {i}
            first += length


def test_a_packed_query_and_a_packed_passages_batch_both_match_padded(dense_path, parity_texts):
    """One short text takes the host-built path and many long ones the device-built path of `_pack`."""
    from bge_core.engine import packing

    packed = Embedder(dense_path, device="cpu", packed=True, reuse_outputs=False, batch_tokens=1 << 16)
    padded = Embedder(dense_path, device="cpu", packed=False, reuse_outputs=False)
    engine = packed.loaded.engine
    long_texts = [" ".join([t] * 40)[:4000] for t in parity_texts] * 2  # one chunk, one batch
    for texts, large in (([parity_texts[0]], False), (long_texts, True)):
        calls, tokens = engine.forward_calls, engine.tokens_forwarded
        np.testing.assert_allclose(packed.encode(texts).dense, padded.encode(texts).dense, atol=1e-5)
        assert engine.forward_calls == calls + 1  # one batch, so its size picks the path
        assert (engine.tokens_forwarded - tokens >= packing.SMALL_BATCH_TOKENS) == large
