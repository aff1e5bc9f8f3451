"""Bad input to `bge encode` and `bge index`: one ``Error:`` line naming the file (and line), nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli.conftest import assert_error_line, bge


def run(command: str, model: str, source: Path, tmp_path: Path):
    """The command on `source`, writing (if it got that far) into tmp_path/out/."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    if command == "encode":
        return bge("encode", model, source, "-o", out / "vectors.parquet", "--device", "cpu")
    return bge("index", source, "--collection", "docs", "--uri", out / "bge.db", "--model", model, "--device", "cpu")


def assert_nothing_written(tmp_path: Path) -> None:
    assert os.listdir(tmp_path / "out") == []  # no output file, no temporary file, no Milvus Lite database


BAD_FILES = {
    "missing file": (None, "{path}: no such file"),
    "a directory": ("DIR", "{path}: is a directory"),
    "jsonl line without the text field": (b'{"text": "fine"}\n{"text": "fine too"}\n{"title": "no text"}\n',
                                          '{path}:3: no "text" field (fields: title)'),
    "non-UTF-8 line (jsonl)": (b'{"text": "fine"}\n{"text": "caf\xe9"}\n', "{path}:2: not valid UTF-8 (byte 0xe9"),
    "non-UTF-8 line (txt)": (b"fine\n\nLatin-1 caf\xe9\n", "{path}:3: not valid UTF-8 (byte 0xe9"),
    "broken JSON": (b'{"text": "fine"}\n{"text": "unterminated}\n', "{path}:2: invalid JSON"),
    "text not a string": (b'{"text": ["a", "list"]}\n', '{path}:1: "text" must be a string, got list'),
    "not parquet": (b"PAR1 but not really", "{path}: not a readable Parquet file"),
}


@pytest.mark.parametrize("command", ["encode", "index"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_input_file(command, case, m3_path, tmp_path):
    content, message = BAD_FILES[case]
    suffix = ".parquet" if case == "not parquet" else ".txt" if "txt" in case else ".jsonl"
    source = tmp_path / f"input{suffix}"
    if content == "DIR":
        source = tmp_path / "folder.jsonl"
        source.mkdir()
    elif content is not None:
        source.write_bytes(content)
    assert_error_line(run(command, m3_path, source, tmp_path), message.format(path=source))
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("command", ["encode", "index"])
@pytest.mark.parametrize("how", ["no permission", "read error"])
def test_unreadable_file(command, how, m3_path, tmp_path):
    source = tmp_path / "secret.txt"
    if how == "no permission":
        if os.name != "posix" or os.geteuid() == 0:
            pytest.skip("root reads files whatever their mode")
        source.write_text("text")
        source.chmod(0)
        message = f"{source}: cannot read (permission denied)"
    else:
        if not os.path.exists("/proc/self/mem"):
            pytest.skip("needs Linux's /proc")
        source.symlink_to("/proc/self/mem")  # opens, but reading it fails with an I/O error
        message = f"{source}: cannot read (Input/output error)"
    assert_error_line(run(command, m3_path, source, tmp_path), message)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("command", ["encode", "index"])
def test_unknown_model_path_and_unreachable_hub_id(command, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("a text\n")
    missing = str(tmp_path / "models" / "bge-m3")
    assert_error_line(run(command, missing, source, tmp_path), f"{missing}: no such model directory")
    assert_nothing_written(tmp_path)
    # HF_HUB_OFFLINE=1 (set for the whole test run): a hub id fails at once, with the id named.
    line = assert_error_line(run(command, "BAAI/bge-m3-does-not-exist", source, tmp_path),
                             "BAAI/bge-m3-does-not-exist", "Hugging Face hub")
    assert "Traceback" not in line
    assert_nothing_written(tmp_path)


def test_bad_input_fails_before_the_model_loads(tmp_path):
    """Input is checked first: a bad file is reported even with a model that would take minutes to download."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    assert_error_line(run("encode", "BAAI/bge-m3", source, tmp_path), f"{source}:2:")
    assert_error_line(run("index", "BAAI/bge-m3", source, tmp_path), f"{source}:2:")


def test_help_and_usage_errors():
    result = bge("--help")
    assert result.exit_code == 0
    for command in ("encode", "index", "search", "demo"):
        assert command in result.stdout
        assert bge(command, "--help").exit_code == 0
    assert bge("encode").exit_code == 2  # missing arguments: click's usage error
    assert bge("frobnicate").exit_code == 2
