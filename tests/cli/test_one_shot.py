"""One-shot commands: no warm-up (so no compiling) unless the job is large enough to pay for it, and a
heap frozen once the command returned (the interpreter's last collection would walk all of it)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bge_cli import common
from bge_core.models import compiled


@pytest.fixture
def not_compiling(monkeypatch):
    """The process as a one-shot command starts it: no warm-up has allowed compiling yet."""
    monkeypatch.setattr(compiled, "_allowed", False)


def test_compiled_functions_run_eagerly_until_a_warm_up_allows_compiling(not_compiling, monkeypatch):
    calls = []

    def double(x):
        calls.append(x)
        return 2 * x

    fn = compiled.Compiled(double)
    assert fn(torch.ones(2)).tolist() == [2.0, 2.0]
    assert fn.compiled is None and len(calls) == 1  # ran as plain Python, nothing compiled
    monkeypatch.setenv(compiled.COMPILE_ENV, "0")
    compiled.allow_compiling()
    assert fn(torch.ones(2)).tolist() == [2.0, 2.0]
    assert fn.compiled is None  # the switch-off still wins


def test_a_small_job_loads_without_warm_up_and_a_large_one_warms_up(not_compiling, monkeypatch, tmp_path,
                                                                     dense_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "a short corpus"}\n' * 50, encoding="utf-8")
    embedder = common.load_embedder(dense_path, device="cpu")
    common.warm_up_if_large(embedder, str(corpus))
    common.warm_up_if_large(embedder, len("a short corpus") * 50)
    common.warm_up_if_large(embedder, str(tmp_path / "missing.jsonl"))  # not a file: no size, no warm-up
    assert embedder.loaded.warmed_up_s is None and not compiled._allowed
    monkeypatch.setattr(common, "COMPILE_PAYS_CHARS", corpus.stat().st_size)
    common.warm_up_if_large(embedder, str(corpus))
    assert embedder.loaded.warmed_up_s is not None and compiled._allowed


FROZEN_AFTER = """import gc, sys
if sys.argv[1] == "with-milvus-lite":
    import milvus_lite
from bge_cli.main import main
main(sys.argv[2:], standalone_mode=False)
print("frozen objects:", gc.get_freeze_count())
"""


@pytest.mark.parametrize("first", ["plain", "with-milvus-lite"])
def test_the_heap_is_frozen_once_a_command_returned_unless_milvus_lite_ran(tmp_path, dense_path, first):
    (tmp_path / "in.txt").write_text("one text\nanother text\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", FROZEN_AFTER, first, "encode", dense_path, str(tmp_path / "in.txt"),
                           "-o", str(tmp_path / "out.npy"), "--device", "cpu", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    frozen = int(done.stdout.rpartition("frozen objects:")[2])
    # Milvus Lite deletes its lock file in a finalizer, which a frozen heap would never run.
    assert frozen > 100_000 if first == "plain" else frozen == 0


def test_help_and_a_bad_option_import_no_torch():
    """`bge --help` and an option error answer without loading torch (seconds on some hosts): the command
    line reaches bge_core only through its light error module until a command runs."""
    code = """import sys
from bge_cli.main import main
for args in (["--help"], ["eval", "--no-such-option"]):
    try:
        main(args, standalone_mode=False)
    except Exception as error:
        print(type(error).__name__)
print("torch loaded:", "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "NoSuchOption" in done.stdout and "torch loaded: False" in done.stdout, done.stdout


def test_every_public_name_of_bge_core_resolves_from_its_lazy_table():
    """`__all__` (what type checkers read) and the table `__getattr__` serves list the same names, and each
    resolves to the object of the module the table names."""
    import importlib

    import bge_core

    assert sorted(bge_core.__all__) == sorted(bge_core._HOMES)
    for name, home in bge_core._HOMES.items():
        assert getattr(bge_core, name) is getattr(importlib.import_module(f"bge_core.{home}"), name)
