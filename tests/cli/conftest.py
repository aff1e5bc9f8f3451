"""Shared pieces of the `bge` command tests: an in-process runner, input files, a Milvus Lite file per module."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bge_cli.demo import load_corpus
from bge_cli.main import main


def bge(*args: str, **kwargs) -> Result:
    """Run `bge ARGS…` in this process (so the tiny models stay loaded between tests)."""
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def assert_error_line(result: Result, *fragments: str) -> str:
    """A user error: exit status 1 and exactly one ``Error: …`` line on stderr, naming every fragment."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus() -> list:
    """The first 12 passages of the demo corpus (ids, texts, languages)."""
    return load_corpus()[:12]


@pytest.fixture
def corpus_jsonl(tmp_path, corpus) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", [{"id": r.id, "text": r.text, **r.metadata} for r in corpus])


def release_lite(uri: str | Path) -> None:
    """Stop the Milvus Lite server of a database file (milvus-lite 2.x keeps one per file until released)."""
    with contextlib.suppress(ImportError):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(str(uri))


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    """One Milvus Lite file for a test module (each file costs a server start); tests use their own collections."""
    uri = str(tmp_path_factory.mktemp("milvus") / "cli.db")
    yield uri
    release_lite(uri)
