"""Determinism on CPU: the same text gives the same outputs whatever batch it shares, call after call, load
after load and run after run.

Exact (bitwise) where the computation is the same: a repeated call, a fresh load of the same files, a
new process. Within 1e-5 across batch company, and here is why not exactly: a text in a batch of n
rows (padded to the longest, or packed back to back) goes through matrix products whose shape depends
on the batch, and the CPU BLAS (oneDNN/MKL) picks its blocking, and so the order of float32 additions,
by shape. Measured on the tiny checkpoints: at most 3.3e-6 (decoder embedder), 9e-7 (BGE-M3), 2e-7
(BERT); the same with one thread and on the packed path. Bitwise batch invariance would need a forward
per text. GPU: tests/gpu/test_gpu.py (cos ≥ 0.9999).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bge_core import Embedder, Reranker, clear_cache

TOL = 1e-5
TEXTS = [
    "BGE models turn text into vectors for retrieval.",
    "short",
    "",
    "大熊猫是中国特有的熊科动物，主要以竹子为食。",
    "Emoji are text too 🐼🎋🔎✨",
    " ".join(["Milvus is a vector database built for similarity search."] * 30),
]
COMPANY = [f"other text {i} " * (1 + i % 9) for i in range(40)]


def outputs(model: Embedder | Reranker, texts: list[str]) -> dict[str, object]:
    if isinstance(model, Reranker):
        return {"scores": model.score([("what do pandas eat?", t) for t in texts])}
    if model.family == "m3":
        out = model.encode(texts, sparse=True, colbert=True)
        return {"dense": out.dense, "sparse": out.lexical_weights, "colbert": out.colbert_vectors}
    return {"dense": model.encode(texts).dense}


def assert_same(a: dict, b: dict, exact: bool) -> None:
    for key in a:
        x, y = a[key], b[key]
        if key == "sparse":
            for row_x, row_y in zip(x, y, strict=True):
                if exact:
                    assert row_x == row_y
                    continue
                for token in set(row_x) | set(row_y):  # a token may cross zero only with a weight near zero
                    assert abs(row_x.get(token, 0.0) - row_y.get(token, 0.0)) <= TOL, (token, row_x, row_y)
        elif key == "colbert":
            for m, n in zip(x, y, strict=True):
                assert m.shape == n.shape
                assert np.array_equal(m, n) if exact else np.abs(m - n).max() <= TOL
        else:
            assert x.shape == y.shape
            if exact:
                np.testing.assert_array_equal(x, y)
            else:
                np.testing.assert_allclose(x, y, rtol=0, atol=TOL)


@pytest.fixture(scope="module")
def paths(m3_path, dense_path, llm_embedder_path, cross_encoder_path) -> dict[str, str]:
    return {"m3": m3_path, "dense": dense_path, "llm_embedder": llm_embedder_path, "cross_encoder": cross_encoder_path}


def make(kind: str, path: str, **options) -> Embedder | Reranker:
    if kind == "cross_encoder":
        return Reranker(path, device="cpu", **options)
    return Embedder(path, device="cpu", reuse_outputs=False, **options)


@pytest.mark.parametrize("kind", ["m3", "dense", "llm_embedder", "cross_encoder"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_batch_company_does_not_change_the_outputs(paths, kind, packed):
    model = make(kind, paths[kind], packed=packed)
    alone = [outputs(model, [t]) for t in TEXTS]
    alone = {key: _concat([a[key] for a in alone]) for key in alone[0]}
    mixed = outputs(model, COMPANY[:17] + TEXTS + COMPANY[17:])  # long and short neighbours
    together = {key: _slice(value, 17, 17 + len(TEXTS)) for key, value in mixed.items()}
    assert_same(alone, together, exact=False)
    small_batches = make(kind, paths[kind], packed=packed, batch_tokens=48)  # many tiny batches, other order
    reverse = outputs(small_batches, TEXTS[::-1])
    assert_same(alone, {key: _slice(value, None, None, -1) for key, value in reverse.items()}, exact=False)


def _concat(parts: list) -> object:
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [x for part in parts for x in part]


def _slice(value: object, start, stop, step=1) -> object:
    return value[start:stop:step]


@pytest.mark.parametrize("kind", ["m3", "dense", "llm_embedder", "cross_encoder"])
def test_repeated_calls_and_fresh_loads_are_bitwise_identical(paths, kind):
    first = outputs(make(kind, paths[kind]), TEXTS)
    assert_same(first, outputs(make(kind, paths[kind]), TEXTS), exact=True)
    clear_cache()  # the next model is read from disk again
    assert_same(first, outputs(make(kind, paths[kind]), TEXTS), exact=True)


RUN = textwrap.dedent("""
    import json, sys
    from bge_core import Embedder, Reranker
    paths, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    m3 = Embedder(paths["m3"], device="cpu", reuse_outputs=False).encode(texts, sparse=True)
    llm = Embedder(paths["llm_embedder"], device="cpu", reuse_outputs=False).encode(texts)
    scores = Reranker(paths["cross_encoder"], device="cpu").score([("what do pandas eat?", t) for t in texts])
    json.dump({"m3": m3.dense.tolist(), "sparse": [{str(k): v for k, v in w.items()} for w in m3.lexical_weights],
               "llm": llm.dense.tolist(), "scores": scores.tolist()}, sys.stdout)
""")


@pytest.mark.timeout(180)
def test_a_new_process_gives_bitwise_identical_outputs(paths):
    done = subprocess.run([sys.executable, "-c", RUN, json.dumps(paths), json.dumps(TEXTS)], capture_output=True,
                          text=True, timeout=170, check=True)
    other = json.loads(done.stdout)
    m3 = make("m3", paths["m3"]).encode(TEXTS, sparse=True)
    # float32 → Python float (float64) → JSON → float32 is lossless.
    np.testing.assert_array_equal(np.asarray(other["m3"], dtype=np.float32), m3.dense)
    assert [{int(k): v for k, v in w.items()} for w in other["sparse"]] == [
        {k: float(np.float32(v)) for k, v in w.items()} for w in m3.lexical_weights
    ]
    np.testing.assert_array_equal(np.asarray(other["llm"], dtype=np.float32),
                                  make("llm_embedder", paths["llm_embedder"]).encode(TEXTS).dense)
    np.testing.assert_array_equal(np.asarray(other["scores"], dtype=np.float32),
                                  make("cross_encoder", paths["cross_encoder"]).score(
                                      [("what do pandas eat?", t) for t in TEXTS]))
