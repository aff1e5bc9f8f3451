"""`bge_cli.io`: streaming readers with file:line errors, atomic writers, terminal tables."""

from __future__ import annotations

import os
from itertools import islice

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bge_cli.io import (
    InputError,
    NpySink,
    atomic_output,
    chunked,
    display_width,
    excerpt,
    format_table,
    read_records,
    scan,
)
from bge_core.types import Embeddings


def test_txt_lines_keep_their_numbers_skip_blanks_and_drop_bom_and_crlf(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufefffirst\r\n\n   \nsecond\u2028still second\nthird".encode())
    records = list(read_records(path))
    assert [(r.line, r.text) for r in records] == [(1, "first"), (4, "second\u2028still second"), (5, "third")]
    assert all(r.id is None for r in records)


def test_jsonl_ids_and_metadata(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": 7, "text": "a", "lang": "en"}\n\n{"text": "b", "tags": ["x"]}\n', encoding="utf-8")
    records = list(read_records(path))
    assert [(r.id, r.text, r.line, r.metadata) for r in records] == [
        ("7", "a", 1, {"lang": "en"}), (None, "b", 3, {"tags": ["x"]})
    ]
    custom = list(islice(read_records(path, text_field="lang", id_field="text"), 1))  # line 3 has no "lang"
    assert (custom[0].text, custom[0].id) == ("en", "a")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"body": "no text"}\n', r't\.jsonl:2: no "text" field \(fields: body\)'),
        ('{"text": "ok"}\n\n{"text": 3}\n', r't\.jsonl:3: "text" must be a string, got int'),
        ('{"text": "ok"}\n{"text": "a", "id": true}\n', r't\.jsonl:2: "id" must be a string or an integer'),
        ('{"text": "ok"}\n{"text": "a",}\n', r"t\.jsonl:2: invalid JSON \(.* at column 14\)"),
        ('["a list"]\n', r"t\.jsonl:1: expected a JSON object, got list"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        scan(path)


def test_non_utf8_line_is_named_with_the_byte(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"fine\nalso fine\nbad \xe9t\xe9\n")
    with pytest.raises(InputError, match=r"t\.txt:3: not valid UTF-8 \(byte 0xe9 at column 5\)"):
        scan(path)


def test_readers_are_lazy_and_chunks_pull_one_chunk_at_a_time(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(f'{{"text": "t{i}"}}\n' for i in range(100)) + '{"oops": 1}\n', encoding="utf-8")
    # The bad line 101 is never read while the first records are taken: nothing is loaded whole.
    assert [r.text for r in islice(read_records(path), 3)] == ["t0", "t1", "t2"]

    pulled = 0

    def source():
        nonlocal pulled
        for i in range(10):
            pulled += 1
            yield i

    seen = []
    for chunk in chunked(source(), 4):
        seen.append((list(chunk), pulled))
    # When each chunk is handed out, only that chunk has been read from the source.
    assert seen == [([0, 1, 2, 3], 4), ([4, 5, 6, 7], 8), ([8, 9], 10)]


def test_parquet_reader_streams_batches_and_names_rows(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(10)], "id": list(range(10))}), path, row_group_size=3)
    records = list(read_records(path, batch_rows=4))
    assert [(r.text, r.id, r.line) for r in records][-2:] == [("t8", "8", 9), ("t9", "9", 10)]

    pq.write_table(pa.table({"text": ["a", None]}), path)
    with pytest.raises(InputError, match=r't\.parquet: row 2: "text" is null'):
        scan(path)
    pq.write_table(pa.table({"body": ["a"]}), path)
    with pytest.raises(InputError, match=r't\.parquet: no "text" column \(columns: body\)'):
        scan(path)
    pq.write_table(pa.table({"text": [1]}), path)
    with pytest.raises(InputError, match=r'column "text" must hold strings'):
        scan(path)
    path.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"t\.parquet: not a readable Parquet file"):
        scan(path)


def test_missing_unreadable_and_unsupported_inputs(tmp_path):
    with pytest.raises(InputError, match=r"nope\.txt: no such file"):
        scan(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="is a directory"):
        scan(tmp_path)
    (tmp_path / "t.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=r"unsupported input format '\.csv'"):
        scan(tmp_path / "t.csv")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("x")
    path.chmod(0)
    with pytest.raises(InputError, match=r"secret\.txt: cannot read \(permission denied\)"):
        scan(path)


def test_atomic_output_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.bin"]
    with atomic_output(target) as tmp, open(tmp, "w") as fh:
        fh.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.bin"]
    with pytest.raises(InputError, match="output folder .* does not exist"), atomic_output(tmp_path / "no" / "x.npy"):
        pass


def test_npy_sink_streams_rows_and_numpy_reads_them(tmp_path):
    path = str(tmp_path / "v.npy")
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 5)).astype(np.float32) for n in (3, 0, 4)]
    with NpySink(path, dim=5) as sink:
        for part in parts:
            sink.write([""] * len(part), [""] * len(part), Embeddings(dense=part))
    loaded = np.load(path, mmap_mode="r")
    assert loaded.shape == (7, 5) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, np.concatenate(parts))
    sink = NpySink(str(tmp_path / "w.npy"), dim=1024)
    sink.rows = 10**15  # the reserved header has room for any row count
    assert len(sink._header()) == NpySink.HEADER_BYTES
    sink.close()


def test_tables_align_wide_characters():
    assert display_width("大熊猫 panda") == 12
    assert excerpt("大熊猫生活在中国", 9) == "大熊猫生…"
    assert excerpt("two\nlines   here", 30) == "two lines here"
    table = format_table(["rank", "text"], [["1", "大熊猫"], ["10", "panda"]], right={0})
    assert table.splitlines() == ["rank  text", "----  ------", "   1  大熊猫", "  10  panda"]
