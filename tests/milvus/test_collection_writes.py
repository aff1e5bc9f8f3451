"""`HybridCollection` writes on Milvus Lite: idempotent and resumable add, empty texts, bad input, reopening."""

from __future__ import annotations

import pytest
from pymilvus import DataType, MilvusClient

from bge_core import Embedder
from bge_core.sparse import EMPTY_PLACEHOLDER_WEIGHT
from bge_milvus import BGEM3EmbeddingFunction, HybridCollection, content_id
from bge_milvus.backend import dense_search_params, is_lite
from tests.milvus.conftest import distractors


class Interrupted(RuntimeError):
    pass


class CountingCollection(HybridCollection):
    """Records what each batch embeds; with `fail_on` set, raises on that batch (fault injection)."""

    def __init__(self, *args, fail_on: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.embedded: list[list[str]] = []
        self.fail_on = fail_on

    def _embed(self, texts):
        if self.fail_on is not None and len(self.embedded) + 1 == self.fail_on:
            raise Interrupted("worker killed mid-add")
        self.embedded.append(list(texts))
        return super()._embed(texts)


def stored_rows(docs: HybridCollection) -> list[dict]:
    return docs.client.query(docs.name, filter='id != ""', output_fields=["id", "text", "metadata"])


def test_re_adding_leaves_the_count_unchanged(m3: Embedder, tmp_path) -> None:
    texts = distractors(50, seed=1)
    with CountingCollection("docs", m3, uri=str(tmp_path / "bge.db"), batch_size=16) as docs:
        before = m3.loaded.engine.rows_forwarded
        ids = docs.add(texts + texts[:5])  # repeats inside one call collapse too
        assert m3.loaded.engine.rows_forwarded - before == 50  # dense and sparse: one forward per text
        assert ids[:50] == [content_id(t) for t in texts] and ids[50:] == ids[:5]
        assert docs.count() == 50
        assert docs.add(texts) == ids[:50]
        assert docs.count() == 50
        assert sum(len(b) for b in docs.embedded) == 50  # the second add embedded nothing

        # Given ids upsert: the same ids with new metadata or text replace their rows, nothing is added.
        docs.add(["alpha", "beta"], ids=["a", "b"], metadata=[{"v": 1}, {"v": 1}])
        docs.add(["alpha", "beta, edited"], ids=["a", "b"], metadata=[{"v": 2}, {"v": 1}])
        assert docs.count() == 52
        rows = {r["id"]: r for r in docs.client.get("docs", ids=["a", "b"], output_fields=["text", "metadata"])}
        assert rows["a"]["metadata"] == {"v": 2} and rows["b"]["text"] == "beta, edited"
        assert docs.embedded[-1] == ["alpha", "beta, edited"]  # both changed rows, and only those
        assert docs.search("beta, edited", k=1, mode="dense")[0].id == "b"


def test_interrupted_add_resumes_to_the_exact_rows(m3: Embedder, tmp_path) -> None:
    texts = distractors(10, seed=2)
    metadata = [{"n": i} for i in range(10)]
    db = str(tmp_path / "bge.db")
    with CountingCollection("docs", m3, uri=db, batch_size=4, fail_on=2) as docs:
        with pytest.raises(Interrupted):
            docs.add(texts, metadata=metadata)
        assert docs.count() == 4  # the first batch is written, whole; nothing of the second

        docs.fail_on = None
        ids = docs.add(texts, metadata=metadata)
        assert docs.embedded[1:] == [texts[4:8], texts[8:]]  # the resumed add embeds only what is missing
        assert docs.count() == 10
        rows = stored_rows(docs)
        assert sorted(r["id"] for r in rows) == sorted(ids) and len({r["id"] for r in rows}) == 10
        assert {r["id"]: (r["text"], r["metadata"]) for r in rows} == {
            i: (t, m) for i, t, m in zip(ids, texts, metadata)
        }


def test_empty_texts_get_the_placeholder_and_are_found_by_dense_search(m3: Embedder, tmp_path) -> None:
    texts = ["", "<s></s>", "Pandas eat bamboo shoots.", "Milvus is a vector database."]
    assert m3.encode(texts[:2], dense=False, sparse=True).lexical_weights == [{}, {}]  # special-only too
    with HybridCollection("docs", m3, uri=str(tmp_path / "bge.db"), batch_size=2) as docs:
        ids = docs.add(texts)
        assert docs.count() == 4
        for row in docs.client.get("docs", ids=ids[:2], output_fields=["sparse"]):
            assert row["sparse"] == {m3.pad_token_id: pytest.approx(EMPTY_PLACEHOLDER_WEIGHT)}
        assert docs.search("", k=1, mode="dense")[0].id == content_id("")
        assert docs.search("Pandas eat bamboo shoots.", k=1, mode="sparse")[0].text == texts[2]
        hybrid = docs.search("", k=4)  # an empty query searches too (its sparse side is the placeholder)
        assert hybrid and hybrid[0].text in ("", "<s></s>")


def test_dimension_mismatch_is_refused_before_writing(m3: Embedder, tmp_path) -> None:
    db = str(tmp_path / "bge.db")
    client = MilvusClient(db)
    try:
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("text", DataType.VARCHAR, max_length=512)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=16)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("metadata", DataType.JSON)
        indexes = client.prepare_index_params()
        indexes.add_index("dense", index_type="FLAT", metric_type="IP")
        indexes.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        client.create_collection("docs", schema=schema, index_params=indexes, consistency_level="Strong")
        client.create_collection("other", dimension=32)  # not ours: lacks text / sparse / metadata

        with pytest.raises(ValueError, match=r"16-dimensional .* 32-dimensional"):
            HybridCollection("docs", m3, uri=db)
        with pytest.raises(ValueError, match="lacks the field"):
            HybridCollection("other", m3, uri=db)
        assert client.query("docs", filter="", output_fields=["count(*)"])[0]["count(*)"] == 0
    finally:
        client.close()


def test_bad_input_writes_nothing(m3: Embedder, tmp_path) -> None:
    with HybridCollection("docs", m3, uri=str(tmp_path / "bge.db"), batch_size=1, text_max_length=100) as docs:
        with pytest.raises(TypeError, match=r"texts\[2\]"):
            docs.add(["a", "b", None, "d"])
        with pytest.raises(TypeError, match="single string"):
            docs.add("a text, not a list")
        with pytest.raises(ValueError, match="one id per text"):
            docs.add(["a", "b"], ids=["x"])
        with pytest.raises(TypeError, match=r"ids\[1\]"):
            docs.add(["a", "b"], ids=["x", 7])
        with pytest.raises(TypeError, match=r"metadata\[1\]"):
            docs.add(["a", "b"], metadata=[{}, {"when": object()}])
        with pytest.raises(ValueError, match=r"\[1\]"):
            docs.add(["short", "x" * 101])
        assert docs.count() == 0
        assert docs.add([]) == []


def test_reopened_collection_is_loaded_and_searchable(m3: Embedder, tmp_path) -> None:
    db = str(tmp_path / "sub" / "dir" / "bge.db")  # missing folders are created
    with HybridCollection("docs", m3, uri=db) as docs:
        docs.add(["Paris is the capital of France.", "Pandas eat bamboo."], ids=["p", "q"])
        index = docs.client.describe_index("docs", "dense")
        assert index["index_type"] == "FLAT" and index["metric_type"] == "IP"
        sparse_index = docs.client.describe_index("docs", "sparse")
        assert sparse_index["index_type"] == "SPARSE_INVERTED_INDEX" and "drop_ratio_build" not in sparse_index
    with HybridCollection("docs", BGEM3EmbeddingFunction(m3), uri=db) as again:  # the function's model
        assert again.count() == 2
        assert again.search("Pandas eat bamboo.", k=1)[0].id == "q"
        again.delete(["q"])
        assert again.count() == 1
        again.drop()
        assert not again.client.has_collection("docs")


def test_backend_choice() -> None:
    assert is_lite("./bge.db") and is_lite("/tmp/x/milvus.db")
    assert not is_lite("http://localhost:19530") and not is_lite("https://in01.zillizcloud.com")
    assert not is_lite("tcp://host:19530")
    assert dense_search_params("HNSW", 200)["params"]["ef"] >= 200  # HNSW needs ef >= the results asked for
    assert dense_search_params("FLAT", 10) == {"metric_type": "IP", "params": {}}
