"""`bge demo`: the main job on local checkpoints, on the random fallback, and as the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bge_cli.demo import BANNER, COLLECTION, QUERIES, load_corpus
from bge_core import Reranker, tiny
from bge_milvus import HybridCollection
from tests.cli.conftest import assert_error_line, bge

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    """Where the random fallback checkpoints are built (shared by this module's tests)."""
    return tmp_path_factory.mktemp("bge-plugins-cache")


def test_the_corpus_is_multilingual_with_unique_ids():
    corpus = load_corpus()
    assert 40 <= len(corpus) <= 60
    assert len({r.id for r in corpus}) == len(corpus)
    assert len({r.metadata["lang"] for r in corpus}) >= 10
    assert {"en", "zh", "de", "fr", "es", "ja", "ar"} <= {r.metadata["lang"] for r in corpus}
    assert len({lang for lang, _ in QUERIES}) == len(QUERIES) >= 3


def test_demo_on_local_checkpoints(m3_path, cross_encoder_path, db):
    with HybridCollection(COLLECTION, m3_path, uri=db, device="cpu") as stale:
        stale.add(["a row left by an earlier run"])
    result = bge("demo", "--model", m3_path, "--reranker", cross_encoder_path, "--db", db, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["random_weights"] == [] and BANNER not in result.stderr
    assert report["indexed"] == len(load_corpus())  # a fresh collection: the stale row is gone
    assert [q["query"] for q in report["queries"]] == [q for _, q in QUERIES]
    reranker = Reranker(cross_encoder_path, device="cpu")
    for query in report["queries"]:
        hits = query["hits"]
        assert len(hits) == 3 and query["search_ms"] > 0 and query["rerank_ms"] > 0
        want = reranker.score([(query["query"], h["text"]) for h in hits], normalize=True)
        assert [h["score"] for h in hits] == pytest.approx(want.tolist(), abs=1e-5)
        assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
        assert all(0 < h["hybrid_score"] < 1 for h in hits)  # RRF scores of the hybrid stage
    for line in ("indexed 42 passages in 16 languages", "hybrid search", "rank  rerank  hybrid  id"):
        assert line in result.stderr  # the human-readable run went to stderr with --json


def test_random_fallback_when_the_hub_cannot_be_had(db, tiny_cache, monkeypatch):
    monkeypatch.setenv("BGE_PLUGINS_CACHE", str(tiny_cache))
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the test run's setting: hub ids cannot be downloaded
    result = bge("demo", "--db", db, "--device", "cpu", "-k", "2")
    assert result.exit_code == 0, result.output
    out = result.stdout
    notice = [line for line in out.splitlines() if line.startswith("bge demo: cannot get")]
    assert notice == [
        "bge demo: cannot get BAAI/bge-m3 and BAAI/bge-reranker-v2-m3 (HF_HUB_OFFLINE=1 and not in the local "
        "Hugging Face cache); running the same pipeline on tiny RANDOM checkpoints instead (pass --model/--reranker "
        "DIR for local weights)."
    ]
    assert out.count(BANNER) == 2  # before and after the results
    assert out.count("rank  rerank  hybrid  id") == len(QUERIES)
    assert "indexed 42 passages" in out
    built = sorted(p.name for p in (tiny_cache / f"random-tiny-{tiny.VERSION}").iterdir())
    assert built == ["bge-m3-random-tiny", "bge-reranker-random-tiny"]


def test_no_fallback_and_bad_local_paths_are_errors(db, tmp_path, cross_encoder_path):
    assert_error_line(bge("demo", "--db", db, "--no-fallback"), "BAAI/bge-m3", "Hugging Face hub")
    missing = str(tmp_path / "my-bge-m3")
    assert_error_line(bge("demo", "--db", db, "--model", missing, "--reranker", cross_encoder_path), missing)


def test_console_script_runs_the_main_job_in_a_fresh_process(tmp_path, tiny_cache):
    """`bge demo` as installed, with no hub: the probe notices within seconds and the fallback runs."""
    script = shutil.which("bge", path=os.path.dirname(sys.executable))
    command = [script, "demo"] if script else [sys.executable, "-m", "bge_cli.main", "demo"]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k not in ("HF_HUB_OFFLINE",)}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", BGE_PLUGINS_CACHE=str(tiny_cache))  # nothing listens on port 9
    proc = subprocess.run(command + ["--db", str(tmp_path / "demo.db"), "--device", "cpu"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the Hugging Face hub is not reachable: 127.0.0.1:9 unreachable" in proc.stdout
    assert BANNER in proc.stdout and proc.stdout.count("rank  rerank  hybrid  id") == len(QUERIES)
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "demo.db").exists() and sorted(os.listdir(tmp_path)) == ["demo.db"]
