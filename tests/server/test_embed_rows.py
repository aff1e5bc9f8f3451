"""`EmbedRows`: the columnar result of an engine call — sliced, iterated, joined and pickled like rows."""

from __future__ import annotations

import asyncio
import pickle

import numpy as np
import pytest

from bge_server.batcher import MicroBatcher
from bge_server.models import EmbedRow, EmbedRows, ScoreRows


def columns(count: int, offset: int = 0) -> EmbedRows:
    """Every output present, each value telling which input it belongs to."""
    dense = np.arange(offset, offset + count, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    sparse = [{i: float(i)} for i in range(offset, offset + count)]
    colbert = [np.full((i % 3 + 1, 2), i, np.float32) for i in range(offset, offset + count)]
    return EmbedRows(count, dense, sparse, colbert, list(range(offset, offset + count)))


def owners(rows: EmbedRows) -> list[int]:
    """Which input each row came from, read from every column (they must agree)."""
    found = []
    for row in rows:
        assert isinstance(row, EmbedRow)
        assert set(row.dense) == {row.tokens} and list(row.sparse) == [row.tokens]
        assert set(row.colbert.ravel()) == {row.tokens}
        found.append(row.tokens)
    return found


def test_slices_iterate_and_join_back_to_the_same_rows() -> None:
    rows = columns(7)
    assert owners(rows) == list(range(7))
    parts = [rows[0:3], rows[3:3], rows[3:7]]
    assert [len(p) for p in parts] == [3, 0, 4]
    assert owners(parts[2]) == [3, 4, 5, 6]
    for wrong in (2, slice(None, None, 2)):
        with pytest.raises(TypeError, match="sliced in order"):
            rows[wrong]
    joined = EmbedRows.join(parts)
    assert len(joined) == 7 and owners(joined) == list(range(7))
    assert joined.dense.shape == (7, 4)


def test_columns_not_asked_for_stay_none() -> None:
    rows = EmbedRows(3, None, [{1: 0.5}, {}, {2: 0.25}], None)
    assert [row.sparse for row in rows[1:]] == [{}, {2: 0.25}]
    assert all(row.dense is None and row.colbert is None and row.tokens is None for row in rows)
    assert EmbedRows.join([rows[:1], rows[1:]]).dense is None


def test_a_slice_pickles_only_its_own_rows() -> None:
    rows = EmbedRows(1000, np.ones((1000, 1024), np.float32), None, None)
    one = pickle.dumps(rows[5:6], protocol=pickle.HIGHEST_PROTOCOL)
    assert len(one) < 5_000  # one 4 KB vector, not the 4 MB matrix it is a view of
    assert pickle.loads(one).dense.shape == (1, 1024)


def test_a_split_request_gets_its_rows_back_in_order_through_the_batcher() -> None:
    calls: list[int] = []

    def engine(key: object, items: list[int]) -> EmbedRows:
        calls.append(len(items))
        return columns(len(items), offset=items[0])

    async def main() -> EmbedRows:
        batcher = MicroBatcher(engine, max_items=4, workers=1, join=EmbedRows.join)
        await batcher.start()
        try:
            return await batcher.submit("k", list(range(10)))
        finally:
            await batcher.stop()

    rows = asyncio.run(main())
    assert calls == [4, 4, 2]
    assert isinstance(rows, EmbedRows) and owners(rows) == list(range(10))


def test_score_rows_slice_and_join_every_column() -> None:
    rows = ScoreRows(5, [0.5, 0.1, 0.9, 0.3, 0.7], list(range(10, 15)), [0.002] * 5)
    parts = [rows[:2], rows[2:2], rows[2:]]
    assert parts[2].scores == [0.9, 0.3, 0.7] and parts[2].tokens == [12, 13, 14]
    joined = ScoreRows.join(parts)
    assert joined.scores == rows.scores and joined.tokens == rows.tokens
    assert joined.tokenization_s == [0.002] * 5 and ScoreRows.join([rows[:1], rows[1:]]).count == 5
    with pytest.raises(TypeError, match="ScoreRows are sliced in order"):
        rows[1]
