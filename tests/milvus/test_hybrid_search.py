"""The pymilvus hello-hybrid flow (three relevant sentences among 1,000 distractors) on Milvus Lite.

The tiny BGE-M3 is random, so "the expected row" for a query is the row whose own text is the
query: dense search ranks it first (inner product 1 with itself, < 1 with every other row) and so
does sparse search (its weights squared beat every distractor's overlap) — `test_corpus_assumption`
checks that on the model's own outputs before the searches rely on it.
"""

from __future__ import annotations

import numpy as np
import pytest
from pymilvus import AnnSearchRequest, DataType, MilvusClient, RRFRanker

from bge_core import Embedder, Reranker, colbert_score, lexical_matching_score
from bge_core.sparse import from_csr_row
from bge_milvus import RRF, BGEM3EmbeddingFunction, BGERerankFunction, HybridCollection, Weighted, content_id
from tests.milvus.conftest import RELEVANT


@pytest.fixture(scope="module")
def collection(m3: Embedder, hello_corpus: list[str], tmp_path_factory: pytest.TempPathFactory):
    db = tmp_path_factory.mktemp("hello") / "bge.db"
    groups = [{"group": "relevant" if i < len(RELEVANT) else "noise", "n": i} for i in range(len(hello_corpus))]
    with HybridCollection("hello", m3, uri=str(db), batch_size=256) as docs:
        docs.add(hello_corpus, metadata=groups)
        yield docs


def test_corpus_assumption(m3: Embedder, hello_corpus: list[str]) -> None:
    out = m3.encode(hello_corpus, dense=True, sparse=True)
    for i in range(len(RELEVANT)):
        assert int(np.argmax(out.dense @ out.dense[i])) == i
        lexical = [lexical_matching_score(out.lexical_weights[i], w) for w in out.lexical_weights]
        assert int(np.argmax(lexical)) == i


def test_hello_hybrid_flow_with_our_functions(collection: HybridCollection, m3: Embedder, hello_corpus) -> None:
    """pymilvus's example, written against MilvusClient, with `BGEM3EmbeddingFunction` as its `ef`."""
    client = collection.client  # the same Milvus Lite database, another collection
    ef = BGEM3EmbeddingFunction(m3, use_fp16=False, device="cpu")
    dense_dim = ef.dim["dense"]
    docs_embeddings = ef(hello_corpus)

    schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
    # INT64: milvus-lite 3 refuses auto_id on a VARCHAR primary key (the pymilvus example's choice).
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=512)
    schema.add_field("sparse_vector", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("dense_vector", DataType.FLOAT_VECTOR, dim=dense_dim)
    index_params = client.prepare_index_params()
    index_params.add_index("sparse_vector", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    index_params.add_index("dense_vector", index_type="FLAT", metric_type="IP")
    client.create_collection("hybrid_demo", schema=schema, index_params=index_params, consistency_level="Strong")
    # Rows of the CSR matrix go in as {token_id: weight}: pymilvus 2.6 also takes a 1-row csr_array,
    # milvus-lite 3 does not (it calls len() on it, which scipy's sparse arrays refuse).
    rows = [
        {"text": hello_corpus[i], "sparse_vector": from_csr_row(docs_embeddings["sparse"], i),
         "dense_vector": docs_embeddings["dense"][i]}
        for i in range(len(hello_corpus))
    ]
    client.insert("hybrid_demo", rows)

    for sentence in RELEVANT:
        query_embeddings = ef([sentence])
        query_sparse = [from_csr_row(query_embeddings["sparse"], 0)]
        sparse_req = AnnSearchRequest(query_sparse, "sparse_vector", {"metric_type": "IP"}, limit=2)
        dense_req = AnnSearchRequest([query_embeddings["dense"][0]], "dense_vector", {"metric_type": "IP"}, limit=2)
        hybrid = client.hybrid_search("hybrid_demo", [sparse_req, dense_req], ranker=RRFRanker(), limit=2,
                                      output_fields=["text"])[0]
        assert hybrid[0]["entity"]["text"] == sentence
        assert hybrid[0]["distance"] == pytest.approx(2 / 61, abs=1e-6)  # first in both lists: 1/61 + 1/61
        for field, data in (("dense_vector", [query_embeddings["dense"][0]]),
                            ("sparse_vector", query_sparse)):
            hits = client.search("hybrid_demo", data=data, anns_field=field, limit=2, output_fields=["text"],
                                 search_params={"metric_type": "IP"})[0]
            assert hits[0]["entity"]["text"] == sentence, field
    client.drop_collection("hybrid_demo")


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_each_mode_finds_the_rows_own_text(collection: HybridCollection, m3: Embedder, mode: str) -> None:
    assert collection.count() == 1003
    for sentence in RELEVANT:
        hits = collection.search(sentence, k=5, mode=mode)
        assert len(hits) == 5
        top = hits[0]
        assert (top.id, top.text, top.metadata["group"]) == (content_id(sentence), sentence, "relevant")
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        own = m3.encode([sentence], sparse=True)
        expected = {"dense": 1.0, "hybrid": 2 / 61,  # RRF(60): first in the dense and the sparse list
                    "sparse": lexical_matching_score(own.lexical_weights[0], own.lexical_weights[0])}[mode]
        assert top.score == pytest.approx(expected, rel=1e-4)


def test_weighted_fusion(collection: HybridCollection) -> None:
    for sentence in RELEVANT:
        by_class = collection.search(sentence, k=3, ranker=Weighted(dense=0.7, sparse=0.3))
        by_pair = collection.search(sentence, k=3, ranker=(0.7, 0.3))
        assert by_class[0].text == sentence
        assert [h.id for h in by_class] == [h.id for h in by_pair]
        assert collection.search(sentence, k=3, ranker=RRF(k=10))[0].score == pytest.approx(2 / 11, rel=1e-4)


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_filter_expression(collection: HybridCollection, mode: str) -> None:
    hits = collection.search(RELEVANT[1], k=10, mode=mode, filter='metadata["group"] == "noise"')
    assert hits and all(h.metadata["group"] == "noise" for h in hits)
    assert RELEVANT[1] not in {h.text for h in hits}
    # `or` rather than `in`: milvus-lite 3 accepts no JSON path on the left of `in`.
    only = collection.search(RELEVANT[1], k=10, mode=mode, filter='metadata["n"] == 0 or metadata["n"] == 2')
    assert {h.text for h in only} <= {RELEVANT[0], RELEVANT[2]}


def test_colbert_rerank(collection: HybridCollection, m3: Embedder) -> None:
    query = RELEVANT[2]
    hits = collection.search(query, k=5, rerank="colbert", candidates=30)
    assert len(hits) == 5 and hits[0].text == query
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)  # MaxSim of unit vectors with themselves
    q = m3.encode([query], dense=False, colbert=True).colbert_vectors[0]
    p = m3.encode([h.text for h in hits], dense=False, colbert=True).colbert_vectors
    assert [h.score for h in hits] == pytest.approx([colbert_score(q, v) for v in p], abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_cross_encoder_rerank(collection: HybridCollection, cross_encoder_path: str) -> None:
    query = "Who started AI research?"
    candidates = collection.search(query, k=20)
    core = Reranker(cross_encoder_path, device="cpu")
    expected = core.score([(query, h.text) for h in candidates])
    best = sorted(zip(expected.tolist(), (h.id for h in candidates)), reverse=True)[:4]

    by_core = collection.search(query, k=4, rerank=core, candidates=20)
    assert [h.id for h in by_core] == [i for _, i in best]
    assert [h.score for h in by_core] == pytest.approx([s for s, _ in best], abs=1e-5)

    by_function = collection.search(query, k=4, rerank=BGERerankFunction(core), candidates=20)
    assert [h.id for h in by_function] == [i for _, i in best]  # sigmoid keeps the order
    assert all(0 < h.score < 1 for h in by_function)

    by_path = collection.search(query, k=4, rerank=cross_encoder_path, candidates=20)
    assert [h.id for h in by_path] == [i for _, i in best]


def test_bad_search_arguments(collection: HybridCollection) -> None:
    with pytest.raises(ValueError, match="mode"):
        collection.search("q", mode="lexical")
    with pytest.raises(TypeError, match="query"):
        collection.search(None)
    with pytest.raises(TypeError, match="rerank"):
        collection.search("q", k=2, rerank=42)
    assert collection.search("q", k=0) == []
