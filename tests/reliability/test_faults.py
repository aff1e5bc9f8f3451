"""Faults: Milvus Lite dying or locked mid-work, and a full disk under `bge encode`.

- Milvus Lite's server killed during `HybridCollection.add`: the call fails within seconds (not after
  pymilvus's ~3.5 minutes of retries), and `add` run again with the same input — in the same process —
  completes with exactly one row per text.
- The database file held by another process: opening it is an error saying so, and once the other
  process lets go, `add` completes with the exact count.
- `bge encode` hitting ENOSPC half-way: exit status 1 with the OS's message, nothing under the output
  name (an existing file there is left as it was), no temporary file left behind.

Device out-of-memory is a fault too: tests/core/test_engine.py injects it on CPU (the batch is split and
the results are the same), tests/gpu/test_gpu.py causes a real one on a GPU.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bge_core import Embedder

pytest.importorskip("pymilvus")

TEXTS = [f"document {i}: pandas eat bamboo in the mountains of Sichuan" for i in range(20)]


@pytest.fixture(scope="module")
def m3(m3_path) -> Embedder:
    return Embedder(m3_path, device="cpu")


def lite_server_pids(db: Path) -> list[int]:
    """Processes serving `db` (milvus-lite 2 runs a `milvus` server process per database file)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"/milvus") and str(db).encode() in argv:
            pids.append(int(entry.name))
    return pids


def stored(coll) -> dict[str, str]:
    rows = coll.client.query(coll.name, filter='id != ""', output_fields=["id", "text"])
    return {r["id"]: r["text"] for r in rows}


@pytest.mark.timeout(180)
def test_milvus_lite_killed_mid_add_fails_fast_and_a_rerun_completes_exactly(m3, tmp_path):
    from pymilvus import MilvusException

    from bge_milvus import HybridCollection, content_id

    db = tmp_path / "bge.db"

    class KilledMidAdd(HybridCollection):
        """Kills the Milvus Lite server just before the second batch is written."""

        batches = 0

        def _write(self, batch, *args):
            self.batches += 1
            if self.batches == 2:
                pids = lite_server_pids(db)
                assert pids, "no Milvus Lite server process found for the database"
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                while any(Path(f"/proc/{pid}/cmdline").exists() and Path(f"/proc/{pid}/cmdline").read_bytes()
                          for pid in pids):  # a zombie's cmdline reads empty
                    time.sleep(0.05)
            return super()._write(batch, *args)

    if not lite_server_pids_supported():
        pytest.skip("this milvus-lite serves from a thread of the test process: there is no server to kill")
    coll = KilledMidAdd("docs", m3, uri=str(db), batch_size=5)
    start = time.perf_counter()
    with pytest.raises(MilvusException):
        coll.add(TEXTS)
    assert time.perf_counter() - start < 30, "a dead Milvus Lite server must fail the call at once"
    coll.close()

    with HybridCollection("docs", m3, uri=str(db), batch_size=5) as again:
        assert again.count() == 5  # the first batch, whole
        ids = again.add(TEXTS)
        assert again.count() == len(TEXTS)
        assert stored(again) == {content_id(t): t for t in TEXTS} == dict(zip(ids, TEXTS))


def lite_server_pids_supported() -> bool:
    """milvus-lite 2 (a server process per file); milvus-lite 3 serves in-process."""
    try:
        from milvus_lite.server import Server  # noqa: F401 - only milvus-lite 2 has it
    except ImportError:
        return False
    return True


HOLDER = textwrap.dedent("""
    import logging, sys
    logging.disable(logging.CRITICAL)
    from pymilvus import MilvusClient
    client = MilvusClient(sys.argv[1])
    print("holding", flush=True)
    sys.stdin.readline()
    client.close()
""")


@pytest.mark.timeout(180)
def test_milvus_lite_file_held_by_another_process_is_a_clear_error_and_a_rerun_completes(m3, tmp_path):
    from pymilvus import MilvusException

    from bge_milvus import HybridCollection

    db = tmp_path / "bge.db"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        start = time.perf_counter()
        with pytest.raises(MilvusException, match="another process") as caught:
            HybridCollection("docs", m3, uri=str(db), batch_size=5)
        assert str(db) in str(caught.value)
        assert time.perf_counter() - start < 30
    finally:
        holder.communicate("\n", timeout=60)
    with HybridCollection("docs", m3, uri=str(db), batch_size=5) as coll:
        coll.add(TEXTS[:7])
        coll.add(TEXTS)  # a rerun of the whole input: upserts, no duplicates
        assert coll.count() == len(TEXTS)


# -- bge encode on a full disk ----------------------------------------------------------------------


@pytest.fixture
def encode_input(tmp_path) -> Path:
    path = tmp_path / "in" / "texts.txt"
    path.parent.mkdir()
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix, sink", [(".parquet", "ParquetSink"), (".npy", "NpySink")])
def test_bge_encode_on_a_full_disk_leaves_no_partial_output(m3_path, encode_input, tmp_path, monkeypatch, suffix,
                                                            sink):
    pytest.importorskip("click")
    from click.testing import CliRunner

    from bge_cli import io
    from bge_cli.main import main

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / f"vectors{suffix}"
    target.write_bytes(b"the previous run's complete output")
    real_write = getattr(io, sink).write
    written = []

    def write_until_the_disk_is_full(self, ids, texts, out):
        if written:  # the second chunk: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(len(ids))
        return real_write(self, ids, texts, out)

    monkeypatch.setattr(getattr(io, sink), "write", write_until_the_disk_is_full)
    result = CliRunner().invoke(main, ["encode", m3_path, str(encode_input), "-o", str(target), "--device", "cpu",
                                       "--chunk-size", "8", "-q"])
    assert written == [8], "the fault must hit after a chunk was written"
    assert result.exit_code == 1, (result.output, result.exception)
    assert "No space left on device" in result.output
    assert "Traceback" not in result.output
    assert target.read_bytes() == b"the previous run's complete output"  # untouched
    assert sorted(p.name for p in out_dir.iterdir()) == [target.name]  # no temporary file left

    # The same command with room on the disk writes the whole output.
    monkeypatch.setattr(getattr(io, sink), "write", real_write)
    result = CliRunner().invoke(main, ["encode", m3_path, str(encode_input), "-o", str(target), "--device", "cpu",
                                       "--chunk-size", "8", "-q"])
    assert result.exit_code == 0, (result.output, result.exception)
    if suffix == ".npy":
        assert np.load(target).shape[0] == len(TEXTS)
    else:
        import pyarrow.parquet as pq

        assert pq.read_table(target).num_rows == len(TEXTS)
    assert sorted(p.name for p in out_dir.iterdir()) == [target.name]
