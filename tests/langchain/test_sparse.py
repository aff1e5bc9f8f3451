"""`BGEM3SparseEmbeddings` alone and with `BGEEmbeddings` in a langchain-milvus hybrid store on Milvus Lite."""

from __future__ import annotations

import pytest
from langchain_milvus import Milvus

from bge_core import Embedder
from bge_core.sparse import EMPTY_PLACEHOLDER_WEIGHT
from bge_langchain import BGEEmbeddings, BGEM3SparseEmbeddings
from tests.fixtures.checkpoints import CORPUS

TEXTS = CORPUS[:12]


def assert_same_weights(got: dict[int, float], expected: dict[int, float]) -> None:
    assert got.keys() == expected.keys()
    assert [got[k] for k in expected] == pytest.approx(list(expected.values()), rel=1e-5)


def test_weights_match_core_and_empty_rows_are_storable(m3_path: str) -> None:
    sparse = BGEM3SparseEmbeddings(model_name=m3_path, device="cpu")
    core = Embedder(m3_path, device="cpu")
    rows = sparse.embed_documents(TEXTS + [""])
    expected = core.encode(TEXTS, dense=False, sparse=True).lexical_weights
    assert len(rows) == len(TEXTS) + 1
    for row, weights in zip(rows, expected):
        assert_same_weights(row, weights)
    for row in rows:
        assert row and all(type(k) is int and type(v) is float and v > 0 for k, v in row.items())
    assert rows[-1] == {core.pad_token_id: EMPTY_PLACEHOLDER_WEIGHT}  # "" has no weights: placeholder

    query = "Where do pandas live?"
    assert_same_weights(sparse.embed_query(query), core.encode_queries([query], sparse=True).lexical_weights[0])
    assert sparse.embed_query("") == {core.pad_token_id: EMPTY_PLACEHOLDER_WEIGHT}


async def test_async_and_bad_input(m3_path: str) -> None:
    sparse = BGEM3SparseEmbeddings(model_name=m3_path, device="cpu")
    assert await sparse.aembed_documents(TEXTS[:3]) == sparse.embed_documents(TEXTS[:3])
    assert await sparse.aembed_query(TEXTS[0]) == sparse.embed_query(TEXTS[0])
    with pytest.raises(TypeError, match=r"texts\[2\]"):
        sparse.embed_documents(["a", "b", 7])
    with pytest.raises(TypeError, match="list of str"):
        sparse.embed_documents("one string")
    with pytest.raises(TypeError, match="must be str"):
        await sparse.aembed_query(None)


def test_needs_an_m3_checkpoint(dense_path: str) -> None:
    with pytest.raises(ValueError, match="BGE-M3"):
        BGEM3SparseEmbeddings(model_name=dense_path, device="cpu")


def test_milvus_hybrid_store_one_forward_per_text(m3_path: str, tmp_path) -> None:
    dense = BGEEmbeddings(model_name=m3_path, device="cpu")
    sparse = BGEM3SparseEmbeddings(model_name=m3_path, device="cpu")
    assert dense.embedder.loaded is sparse.embedder.loaded  # one copy of the weights
    engine = Embedder(m3_path, device="cpu").loaded.engine
    dense.embedder.loaded.memo.clear()  # texts other tests encoded must not hide forwards

    store = Milvus(
        embedding_function=[dense, sparse],
        vector_field=["dense", "sparse"],
        index_params=[
            {"index_type": "FLAT", "metric_type": "IP"},
            {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "IP"},
        ],
        search_params=[{"metric_type": "IP", "params": {}}, {"metric_type": "IP", "params": {}}],
        connection_args={"uri": str(tmp_path / "lc.db")},
        auto_id=True,
        drop_old=True,
    )
    try:
        texts = TEXTS + [""]  # "" stores the placeholder row instead of being rejected
        before = engine.rows_forwarded
        ids = store.add_texts(texts, metadatas=[{"n": i} for i in range(len(texts))])
        assert engine.rows_forwarded - before == len(texts)  # dense + sparse from ONE forward per text
        assert len(ids) == len(texts)

        for i in (1, 5, 9):
            dense.embedder.loaded.memo.clear()  # the query is a stored text: make it cost a forward again
            before = engine.rows_forwarded
            hits = store.similarity_search(TEXTS[i], k=3, fetch_k=10, ranker_type="rrf")
            assert engine.rows_forwarded - before == 1  # the query too: one forward for both fields
            assert hits[0].page_content == TEXTS[i] and hits[0].metadata["n"] == i

        # Each field alone finds the document: the hybrid result is not carried by one of them.
        for field, embedding in (("dense", dense.embed_query(TEXTS[3])), ("sparse", sparse.embed_query(TEXTS[3]))):
            found = store.client.search(
                store.collection_name, data=[embedding], anns_field=field, limit=1,
                search_params={"metric_type": "IP", "params": {}}, output_fields=["text"],
            )
            assert found[0][0]["entity"]["text"] == TEXTS[3]
    finally:
        store.client.close()
