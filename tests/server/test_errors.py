"""Every error in its API's shape and status; the server keeps serving after each."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

from tests.server.conftest import Server, start_server

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def guarded(m3_path: str, cross_encoder_path: str) -> Iterator[Server]:
    """API key from the environment, no auto-truncation, small client batches, two requests in flight."""
    running = start_server(
        "--model", m3_path, "--served-model-name", "bge-m3", "--reranker", cross_encoder_path,
        "--max-client-batch-size", "64", "--max-concurrent-requests", "2", "--no-auto-truncate",
        env={"BGE_API_KEY": KEY},
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
def client(guarded: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded.url, headers=AUTH, timeout=60) as c:
        yield c
    # After every error test the server still answers.
    with httpx.Client(base_url=guarded.url, headers=AUTH, timeout=60) as c:
        after = c.post("/embed", json={"inputs": ["still serving"]})
        assert after.status_code == 200 and len(after.json()[0]) == 32


def tei_error(response: httpx.Response, status: int, kind: str, words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == kind
    assert words in body["error"]


def openai_error(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert words in body["error"]["message"] and body["message"] == body["error"]["message"]
    assert body["code"] == status


def test_api_key_on_every_route_but_health_and_metrics(guarded: Server, client: httpx.Client) -> None:
    for path, body in [("/embed", {"inputs": "x"}), ("/", {"inputs": "x"}), ("/rerank", {"query": "q", "texts": ["a"]}),
                       ("/tokenize", {"inputs": "x"}), ("/embed_m3", {"inputs": "x"})]:
        tei_error(httpx.post(guarded.url + path, json=body), 401, "Unauthorized", "API key")
    wrong = httpx.post(guarded.url + "/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer no"})
    openai_error(wrong, 401, "API key")
    assert httpx.get(guarded.url + "/info").status_code == 401
    assert httpx.get(guarded.url + "/health").status_code == 200
    assert "te_request_failure" in httpx.get(guarded.url + "/metrics").text
    assert client.get("/info").json()["served_model_name"] == "bge-m3"


def test_empty_input_is_400(client: httpx.Client) -> None:
    tei_error(client.post("/embed", json={"inputs": []}), 400, "Empty", "cannot be empty")
    tei_error(client.post("/rerank", json={"query": "q", "texts": []}), 400, "Empty", "`texts` cannot be empty")
    openai_error(client.post("/v1/embeddings", json={"input": [], "model": "bge-m3"}), 400, "cannot be empty")


def test_validation_is_422(client: httpx.Client) -> None:
    tei_error(client.post("/embed", json={"inputs": ["ok", 7]}), 422, "Validation", "`inputs[1]` must be a string")
    tei_error(client.post("/embed", json={"inputs": [[1, 2]]}), 422, "Validation", "token ids")
    tei_error(client.post("/embed", json={"inputs": "x", "normalize": "maybe"}), 422, "Validation", "normalize")
    tei_error(client.post("/embed", json={"inputs": ["x"] * 65}), 422, "Validation", "maximum allowed batch size 64")
    tei_error(client.post("/embed", json={"inputs": "x", "prompt_name": "nope"}), 422, "Validation", "prompt_name")
    tei_error(client.post("/embed", json={"inputs": "x", "truncation_direction": "Left"}), 422, "Validation", "Left")
    openai_error(client.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"}), 422, "encoding_format")
    tei_error(client.post("/rerank", json={"query": 3, "texts": ["a"]}), 422, "Validation", "`query`")


def test_too_long_without_truncation_names_the_request_index(client: httpx.Client) -> None:
    long = " ".join(["panda"] * 3000)
    response = client.post("/embed", json={"inputs": ["short", "fine", long]})
    tei_error(response, 422, "Validation", "index 2")
    assert client.post("/embed", json={"inputs": [long], "truncate": True}).status_code == 200


def test_unknown_model_and_wrong_kind(client: httpx.Client) -> None:
    openai_error(client.post("/v1/embeddings", json={"input": "x", "model": "nope"}), 404, "not served here")
    assert client.post("/v1/embeddings", json={"input": "x", "model": "nope"}).json()["error"]["code"] == \
        "model_not_found"
    tei_error(client.post("/embed", json={"inputs": "x", "model": "nope"}), 404, "ModelNotFound", "'bge-m3'")
    openai_error(client.post("/v1/rerank", json={"query": "q", "documents": ["a"], "model": "nope"}), 404, "nope")
    rr = client.get("/info").json()["models"][1]["served_model_name"]
    tei_error(client.post("/embed", json={"inputs": "x", "model": rr}), 422, "Validation", "reranker")


def test_malformed_json_and_unknown_route(client: httpx.Client) -> None:
    bad = client.post("/embed", content=b'{"inputs": ["a",', headers={"content-type": "application/json"})
    tei_error(bad, 400, "Validation", "malformed JSON")
    bad_openai = client.post("/v1/embeddings", content=b"{oops", headers={"content-type": "application/json"})
    openai_error(bad_openai, 400, "malformed JSON")
    tei_error(client.post("/", content=b"[1,", headers={"content-type": "application/json"}), 400, "Validation",
              "malformed JSON")
    tei_error(client.post("/nowhere", json={}), 404, "NotFound", "/nowhere")


def test_ten_megabyte_body_is_refused_with_413(client: httpx.Client) -> None:
    huge = b'{"inputs": ["' + b"a" * (10 << 20) + b'"]}'
    tei_error(client.post("/embed", content=huge, headers={"content-type": "application/json"}), 413,
              "PayloadTooLarge", "payload limit of 2000000")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"inputs": ["'
        for _ in range(12):
            yield b"b" * (256 << 10)
        yield b'"]}'

    chunked = client.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    openai_error(chunked, 413, "payload limit")


def test_overload_is_429_past_max_concurrent_requests(guarded: Server, client: httpx.Client) -> None:
    slow = {"inputs": [" ".join(["vector search"] * 400)] * 64, "truncate": True}
    results: list[httpx.Response] = []

    def call() -> None:
        with httpx.Client(base_url=guarded.url, headers=AUTH, timeout=120) as c:
            results.append(c.post("/embed", json=slow))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in results)
    assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}
    tei_error(next(r for r in results if r.status_code == 429), 429, "Overloaded", "limit is 2")
    assert np.asarray(next(r for r in results if r.status_code == 200).json()).shape == (64, 32)


def test_garbage_on_the_socket_does_not_hurt(guarded: Server, client: httpx.Client) -> None:
    parsed = urlparse(guarded.url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        raw.recv(1024)
