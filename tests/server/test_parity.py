"""Every route's vectors and scores equal the in-process `Embedder` / `Reranker` (fp32 CPU)."""

from __future__ import annotations

import base64
import re

import httpx
import numpy as np
import pytest

from bge_core import Embedder, Reranker
from tests.conftest import PARITY_TEXTS
from tests.server.conftest import Server

TEXTS = list(PARITY_TEXTS)
QUERY = "What do giant pandas eat?"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def assert_close(got: list, expected: np.ndarray) -> None:
    got_array = np.asarray(got, dtype=np.float32)
    assert got_array.shape == expected.shape
    assert cosines(got_array, expected).min() >= 0.99999


def post(server: Server, path: str, body: dict) -> httpx.Response:
    response = httpx.post(server.url + path, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response


def sparse_dict(items: list[dict]) -> dict[int, np.float32]:
    return {item["index"]: np.float32(item["value"]) for item in items}


def test_embed_dense_normalized_raw_and_single_string(server: Server, m3: Embedder, dense: Embedder) -> None:
    assert_close(post(server, "/embed", {"inputs": TEXTS}).json(), m3.encode(TEXTS).dense)
    assert_close(post(server, "/embed", {"inputs": TEXTS, "model": "bge-small"}).json(), dense.encode(TEXTS).dense)
    raw = post(server, "/embed", {"inputs": TEXTS[:3], "normalize": False}).json()
    expected_raw = Embedder(m3, normalize=False).encode(TEXTS[:3]).dense
    assert_close(raw, expected_raw)
    assert np.allclose(np.linalg.norm(raw, axis=1), np.linalg.norm(expected_raw, axis=1), rtol=1e-5)
    single = post(server, "/embed", {"inputs": TEXTS[0]}).json()
    assert len(single) == 1 and len(single[0]) == m3.dim  # 2-D even for one string, as TEI


def test_prompt_name_and_dimensions(server: Server, dense: Embedder) -> None:
    got = post(server, "/embed", {"inputs": ["what is BGE?"], "model": "bge-small", "prompt_name": "query"}).json()
    assert_close(got, dense.encode_queries(["what is BGE?"]).dense)
    short = np.asarray(post(server, "/embed", {"inputs": TEXTS[:2], "dimensions": 8}).json())
    assert short.shape == (2, 8) and np.allclose(np.linalg.norm(short, axis=1), 1, atol=1e-5)
    # without normalising, the first 8 components of the raw vectors as they are
    raw = np.asarray(post(server, "/embed", {"inputs": TEXTS[:2], "model": "bge-small", "dimensions": 8,
                                            "normalize": False}).json())
    assert np.allclose(raw, Embedder(dense, normalize=False).encode(TEXTS[:2]).dense[:, :8], rtol=1e-4, atol=1e-5)


def test_root_and_invocations_embed(server: Server, m3: Embedder) -> None:
    expected = m3.encode(TEXTS[:2]).dense
    assert_close(post(server, "/", {"inputs": TEXTS[:2]}).json(), expected)
    assert_close(post(server, "/invocations", {"inputs": TEXTS[:2]}).json(), expected)


def test_embed_sparse_is_identical(server: Server, m3: Embedder) -> None:
    got = post(server, "/embed_sparse", {"inputs": TEXTS}).json()
    expected = m3.encode(TEXTS, dense=False, sparse=True).lexical_weights
    assert len(got) == len(expected)
    for items, weights in zip(got, expected):
        assert [item["index"] for item in items] == sorted(weights)
        assert sparse_dict(items) == {k: np.float32(v) for k, v in weights.items()}


def test_embed_all_gives_every_tokens_state(server: Server, m3: Embedder, dense: Embedder) -> None:
    for model, embedder in ((None, m3), ("bge-small", dense)):
        got = post(server, "/embed_all", {"inputs": TEXTS, "model": model}).json()
        expected = embedder.encode_token_states(TEXTS)
        assert len(got) == len(expected)
        for states, reference in zip(got, expected):
            states = np.asarray(states, dtype=np.float32)
            assert states.shape == reference.shape  # inputs × tokens × hidden, special tokens included
            assert np.abs(states - reference).max() <= 1e-5
    query = post(server, "/embed_all", {"inputs": "what is BGE?", "model": "bge-small", "prompt_name": "query"}).json()
    [expected_query] = dense.encode_token_states(["what is BGE?"], prompt="query")
    assert np.abs(np.asarray(query[0], dtype=np.float32) - expected_query).max() <= 1e-5


def test_embed_m3_all_outputs_from_one_call(server: Server, m3: Embedder) -> None:
    body = {"inputs": TEXTS, "dense": True, "sparse": True, "colbert": True}
    got = post(server, "/embed_m3", body).json()
    expected = m3.encode(TEXTS, dense=True, sparse=True, colbert=True)
    assert_close([row["dense"] for row in got], expected.dense)
    for row, weights, vectors in zip(got, expected.lexical_weights, expected.colbert_vectors):
        assert sparse_dict(row["sparse"]) == {k: np.float32(v) for k, v in weights.items()}
        colbert = np.asarray(row["colbert"], dtype=np.float32).reshape(-1, m3.colbert_dim)
        assert colbert.shape == vectors.shape
        if len(vectors):
            assert cosines(colbert, vectors).min() >= 0.99999
    only_sparse = post(server, "/embed_m3", {"inputs": TEXTS[:1], "dense": False}).json()
    assert set(only_sparse[0]) == {"sparse"}


def test_openai_embeddings_float_and_base64(server: Server, m3: Embedder) -> None:
    expected = m3.encode(TEXTS).dense
    for path in ("/v1/embeddings", "/embeddings"):
        data = post(server, path, {"input": TEXTS, "model": "bge-m3"}).json()
        assert data["object"] == "list" and data["model"] == "bge-m3"
        assert [d["index"] for d in data["data"]] == list(range(len(TEXTS)))
        assert_close([d["embedding"] for d in data["data"]], expected)
        tokens = sum(len(t) for t in m3.tokenize(TEXTS, max_length=m3.max_length))
        assert data["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    encoded = post(server, "/v1/embeddings", {"input": TEXTS, "model": "bge-m3", "encoding_format": "base64"}).json()
    vectors = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in encoded["data"]]
    assert_close(vectors, expected)


@pytest.mark.parametrize("raw_scores", [False, True])
def test_tei_rerank_sorted_all_items(server: Server, reranker: Reranker, raw_scores: bool) -> None:
    body = {"query": QUERY, "texts": TEXTS, "raw_scores": raw_scores, "return_text": True}
    got = post(server, "/rerank", body).json()
    expected = reranker.score([(QUERY, t) for t in TEXTS], normalize=not raw_scores)
    assert sorted(item["index"] for item in got) == list(range(len(TEXTS)))
    assert [item["score"] for item in got] == sorted((item["score"] for item in got), reverse=True)
    for item in got:
        assert abs(item["score"] - float(expected[item["index"]])) <= 1e-5
        assert item["text"] == TEXTS[item["index"]]


def test_cohere_rerank_on_every_path(server: Server, reranker: Reranker) -> None:
    expected = reranker.score([(QUERY, t) for t in TEXTS], normalize=True)
    best = np.argsort(-expected, kind="stable")[:3].tolist()
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        body = {"query": QUERY, "documents": TEXTS, "top_n": 3, "return_documents": True, "model": "reranker"}
        data = post(server, path, body).json()
        assert data["model"] == "reranker"
        assert [r["index"] for r in data["results"]] == best
        for result in data["results"]:
            assert abs(result["relevance_score"] - float(expected[result["index"]])) <= 1e-5
            assert result["document"] == {"text": TEXTS[result["index"]]}
    objects = post(server, "/v2/rerank", {"query": QUERY, "documents": [{"text": t} for t in TEXTS]}).json()
    assert len(objects["results"]) == len(TEXTS) and "document" not in objects["results"][0]


def test_predict_and_similarity(server: Server, reranker: Reranker, m3: Embedder) -> None:
    one = post(server, "/predict", {"inputs": [QUERY, TEXTS[1]]}).json()
    assert abs(one[0]["score"] - float(reranker.score((QUERY, TEXTS[1]), normalize=True)[0])) <= 1e-5
    many = post(server, "/predict", {"inputs": [[QUERY, t] for t in TEXTS[:3]], "raw_scores": True}).json()
    expected = reranker.score([(QUERY, t) for t in TEXTS[:3]])
    assert [round(row[0]["score"], 4) for row in many] == [round(float(s), 4) for s in expected]
    sims = post(server, "/similarity", {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:4]}}).json()
    vectors = m3.encode(TEXTS[:4]).dense
    assert np.allclose(sims, vectors[1:] @ vectors[0], atol=1e-5)


def test_tokenize_and_decode(server: Server, m3: Embedder) -> None:
    got = post(server, "/tokenize", {"inputs": ["hello world", TEXTS[2]]}).json()
    expected = m3.tokenize(["hello world", TEXTS[2]])
    assert [[t["id"] for t in row] for row in got] == [[t.id for t in row] for row in expected]
    assert set(got[0][0]) == {"id", "text", "special", "start", "stop"} and got[0][0]["special"]
    ids = [t["id"] for t in got[0]]
    assert post(server, "/decode", {"ids": ids}).json() == m3.decode([ids])
    assert post(server, "/decode", {"ids": [ids, ids], "skip_special_tokens": False}).json() == m3.decode(
        [ids, ids], skip_special_tokens=False)


def test_info_health_metrics(server: Server, m3: Embedder) -> None:
    info = httpx.get(server.url + "/info").json()
    assert info["served_model_name"] == "bge-m3" and info["model_type"] == {"embedding": {"pooling": "cls"}}
    assert info["max_client_batch_size"] == 1024 and info["auto_truncate"] is True
    assert [m["served_model_name"] for m in info["models"]] == ["bge-m3", "bge-small", "reranker"]
    assert info["models"][2]["model_type"]["reranker"]
    for path in ("/health", "/ping"):
        assert httpx.get(server.url + path).status_code == 200
    post(server, "/embed", {"inputs": TEXTS[:2]})
    metrics = httpx.get(server.url + "/metrics").text
    for name in ("te_request_count", "te_request_success", "te_request_duration", "te_batch_next_size",
                 "te_queue_size"):
        assert name in metrics
    # the engine host's own calls, where one runs the models; none where the HTTP process runs them
    with_host = "engine host process" in server.log()
    for name in ("bge_engine_batch_size_count", "bge_engine_call_duration_count"):
        counted = re.findall(rf"^{name} (\S+)$", metrics, re.MULTILINE)
        assert len(counted) == (1 if with_host else 0), name
        assert all(float(value) >= 1 for value in counted), name
    models = httpx.get(server.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["bge-m3", "bge-small", "reranker"]


def test_a_request_bigger_than_one_engine_call_is_split_not_refused(server: Server, dense: Embedder) -> None:
    texts = [f"text number {i} about pandas" for i in range(1200)]  # > 512 per call, > TEI's 32
    got = post(server, "/embed", {"inputs": texts[:1024], "model": "bge-small"}).json()
    assert_close(got, dense.encode(texts[:1024]).dense)
    over = httpx.post(server.url + "/embed", json={"inputs": texts, "model": "bge-small"}, timeout=60)
    assert over.status_code == 422 and "maximum allowed batch size 1024" in over.json()["error"]


def test_vertex_answers_each_instance_as_its_route(server: Server, dense: Embedder, reranker: Reranker) -> None:
    """TEI's /vertex: a body with query and texts is a rerank, any other an embed (here: models are served
    for both); the predictions are those routes' own answers, in order."""
    instances = [{"inputs": TEXTS[:2]}, {"query": QUERY, "texts": TEXTS[:3]},
                 {"inputs": TEXTS[2], "model": "bge-small", "prompt_name": "query"}]
    got = post(server, "/vertex", {"instances": instances}).json()
    assert set(got) == {"predictions"} and len(got["predictions"]) == 3
    embedded, ranked, queried = got["predictions"]
    assert_close(embedded, np.asarray(post(server, "/embed", instances[0]).json()))
    assert [r["index"] for r in ranked] == [r["index"] for r in post(server, "/rerank", instances[1]).json()]
    expected = reranker.score([(QUERY, t) for t in TEXTS[:3]], normalize=True)
    assert all(abs(r["score"] - float(expected[r["index"]])) <= 1e-5 for r in ranked)
    assert_close(queried, dense.encode_queries([TEXTS[2]]).dense)
    assert post(server, "/vertex", {"instances": []}).json() == {"predictions": []}


def test_vertex_refuses_a_bad_instance_by_its_index(server: Server) -> None:
    bad = httpx.post(server.url + "/vertex", json={"instances": [{"inputs": "fine"}, {"inputs": "x", "normalize": 3}]},
                     timeout=60)
    assert bad.status_code == 422 and "instances[1]" in bad.json()["error"]
    empty = httpx.post(server.url + "/vertex", json={"instances": [{"inputs": "fine"}, {"inputs": []}]}, timeout=60)
    assert empty.status_code == 400 and empty.json()["error_type"] == "Empty"
    assert post(server, "/vertex", {"instances": [{"inputs": "still serving"}]}).json()["predictions"]


def test_vertex_on_a_reranker_server_predicts(cross_encoder_path: str, reranker: Reranker) -> None:
    from tests.server.conftest import start_server

    running = start_server("--reranker", cross_encoder_path)
    try:
        got = post(running, "/vertex", {"instances": [{"inputs": [QUERY, TEXTS[1]]}]}).json()
        assert abs(got["predictions"][0][0]["score"] - float(reranker.score((QUERY, TEXTS[1]), normalize=True)[0])) \
            <= 1e-5
    finally:
        assert running.stop() == 0, running.log()


TIMES = ("x-compute-time", "x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time")


def timing(response: httpx.Response) -> dict[str, int]:
    headers = {name: int(response.headers[name]) for name in TIMES}
    assert all(value >= 0 for value in headers.values())
    assert headers["x-compute-time"] == headers["x-total-time"] >= max(
        headers["x-queue-time"], headers["x-inference-time"], headers["x-tokenization-time"])
    return headers


def test_tei_headers_count_characters_and_the_engines_tokens(server: Server, m3: Embedder,
                                                             reranker: Reranker) -> None:
    texts = [f"{t} #{i}" for i, t in enumerate(TEXTS * 6)]
    response = post(server, "/embed", {"inputs": texts})
    assert response.headers["x-compute-type"] == "cpu+optimized"
    assert int(response.headers["x-compute-characters"]) == sum(len(t) for t in texts)
    assert int(response.headers["x-compute-tokens"]) == sum(m3.count_tokens(texts, max_length=m3.max_length))
    assert timing(response)["x-inference-time"] >= 1  # dozens of texts through a CPU forward
    ranked = post(server, "/rerank", {"query": QUERY, "texts": TEXTS})
    assert int(ranked.headers["x-compute-characters"]) == len(QUERY) * len(TEXTS) + sum(len(t) for t in TEXTS)
    tokens = [0] * len(TEXTS)

    def told(indices: list[int], counts: list[int]) -> None:
        for i, c in zip(indices, counts, strict=True):
            tokens[i] = c

    reranker.score([(QUERY, t) for t in TEXTS], on_tokens=told)
    assert int(ranked.headers["x-compute-tokens"]) == sum(tokens)
    timing(ranked)


@pytest.mark.parametrize("path, body", [
    ("/embed_sparse", {"inputs": ["a"]}), ("/embed_all", {"inputs": ["a"]}), ("/embed_m3", {"inputs": ["a"]}),
    ("/predict", {"inputs": ["q", "a"]}), ("/similarity", {"inputs": {"source_sentence": "s", "sentences": ["a"]}}),
    ("/v1/embeddings", {"input": "a"}), ("/v1/rerank", {"query": "q", "documents": ["a"]}), ("/", {"inputs": "a"}),
])
def test_every_inference_route_sends_the_tei_headers(server: Server, path: str, body: dict) -> None:
    response = post(server, path, body)
    timing(response)
    assert int(response.headers["x-compute-tokens"]) > 0 and int(response.headers["x-compute-characters"]) > 0
    assert "x-compute-tokens" not in post(server, "/tokenize", {"inputs": "a"}).headers


def scraped(server: Server) -> dict[str, float]:
    """The server's /metrics samples, by name (labels included in the name)."""
    text = httpx.get(server.url + "/metrics").text
    return {name: float(value) for name, value in re.findall(r"^(\S+) (\S+)$", text, re.MULTILINE)}


def test_tei_metrics_count_tokens_per_input_and_times_per_request(server: Server, m3: Embedder) -> None:
    texts = [f"{t} (metrics)" for t in TEXTS[:5]]
    before = scraped(server)
    post(server, "/embed", {"inputs": texts})
    after = scraped(server)

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    tokens = sum(m3.count_tokens(texts, max_length=m3.max_length))
    assert grew("te_request_input_length_count") == 5 and grew("te_request_input_length_sum") == tokens
    assert grew("te_batch_next_tokens_sum") == tokens and grew("te_batch_next_size_sum") == 5
    for name in ("tokenization", "queue", "inference"):
        assert grew(f"te_request_{name}_duration_count") == 1, name
    assert grew("te_request_inference_duration_sum") > 0
    assert grew("te_embed_count_total") == grew("te_embed_success_total") == 5
    before = scraped(server)
    post(server, "/rerank", {"query": QUERY, "texts": texts[:3]})
    httpx.post(server.url + "/rerank", json={"query": QUERY, "texts": ["ok", 3]}, timeout=60)  # refused: not sent
    after = scraped(server)
    assert grew("te_predict_count_total") == grew("te_predict_success_total") == 3
    before = scraped(server)
    too_long = httpx.post(server.url + "/embed", json={"inputs": ["word " * 9000], "truncate": False}, timeout=60)
    assert too_long.status_code == 422
    after = scraped(server)
    assert grew("te_embed_count_total") == 1 and grew("te_embed_success_total") == 0
