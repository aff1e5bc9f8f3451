"""milvus-lite 3 calls `bge serve` itself: its TEXT_EMBEDDING function (provider openai, base_url = our
server) embeds raw text at insert and search, and its model reranker (provider cohere) reranks.

Runs on the pymilvus 3 line (`bash run.sh test-pymilvus3`); the pymilvus 2.6 line's milvus-lite 2.5
has no server-side functions, so there it is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

pymilvus = pytest.importorskip("pymilvus")
if int(pymilvus.__version__.split(".")[0]) < 3:
    pytest.skip(f"pymilvus {pymilvus.__version__} / milvus-lite 2.x has no TEXT_EMBEDDING function; "
                "run `bash run.sh test-pymilvus3`", allow_module_level=True)

from pymilvus import DataType, Function, FunctionType, MilvusClient  # noqa: E402

from bge_core import Embedder, Reranker  # noqa: E402
from tests.server.conftest import Server, start_server  # noqa: E402

DOCS = [
    "The giant panda is a bear native to south central China.",
    "Pandas eat bamboo shoots and leaves almost exclusively.",
    "Milvus is a vector database built for similarity search.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "The quick brown fox jumps over the lazy dog.",
    "大熊猫是中国特有的熊科动物，主要以竹子为食。",
]
QUERY = "What do pandas eat?"


@pytest.fixture(scope="module")
def lite_server(m3_path: str, cross_encoder_path: str) -> Iterator[Server]:
    running = start_server("--model", m3_path, "--served-model-name", "bge-m3", "--reranker", cross_encoder_path,
                           "--served-model-name", "reranker", "--api-key", "lite-key")
    yield running
    assert running.stop() == 0, running.log()


def test_text_embedding_function_calls_the_server(lite_server: Server, m3: Embedder, reranker: Reranker,
                                                  tmp_path) -> None:
    client = MilvusClient(str(tmp_path / "lite3.db"))
    schema = client.create_schema()
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=1000)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=m3.dim)
    schema.add_function(Function(
        name="bge", function_type=FunctionType.TEXTEMBEDDING, input_field_names=["text"],
        output_field_names=["dense"],
        params={"provider": "openai", "model_name": "bge-m3", "base_url": lite_server.url + "/v1",
                "api_key": "lite-key", "dimensions": m3.dim},
    ))
    index = client.prepare_index_params()
    index.add_index(field_name="dense", index_type="FLAT", metric_type="IP")
    client.create_collection("docs", schema=schema, index_params=index)
    client.insert("docs", [{"id": i, "text": t} for i, t in enumerate(DOCS)])  # raw text only

    stored = client.query("docs", filter="id >= 0", output_fields=["id", "dense"])
    vectors = m3.encode(DOCS).dense
    for row in stored:
        got = np.asarray(row["dense"], dtype=np.float32)
        assert float(got @ vectors[row["id"]]) / np.linalg.norm(got) >= 0.99999

    hits = client.search("docs", data=[QUERY], anns_field="dense", limit=3, output_fields=["text"])[0]
    expected = np.argsort(-(vectors @ m3.encode([QUERY]).dense[0]), kind="stable")[:3].tolist()
    assert [hit["id"] for hit in hits] == expected
    assert [hit["entity"]["text"] for hit in hits] == [DOCS[i] for i in expected]

    ranker = Function(
        name="rerank", function_type=FunctionType.RERANK, input_field_names=["text"],
        params={"reranker": "model", "provider": "cohere", "model_name": "reranker", "queries": [QUERY],
                "base_url": lite_server.url + "/v2", "api_key": "lite-key"},
    )
    reranked = client.search("docs", data=[QUERY], anns_field="dense", limit=len(DOCS), output_fields=["text"],
                             ranker=ranker)[0]
    scores = reranker.score([(QUERY, d) for d in DOCS], normalize=True)
    assert [hit["id"] for hit in reranked] == np.argsort(-scores, kind="stable").tolist()
