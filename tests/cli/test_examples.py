"""Every script in examples/ runs on tiny checkpoints, retrieves the right passage and reranks like core."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bge_cli.demo import load_corpus
from bge_core import Reranker
from tests.cli.conftest import release_lite

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TARGET = load_corpus()[2]  # the query is this passage's text: with random weights only it is surely the best match


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run(name: str, m3_path: str, cross_encoder_path: str, uri: Path, capsys) -> str:
    code = example(name).main(["--model", m3_path, "--reranker", cross_encoder_path, "--uri", str(uri),
                               "--device", "cpu", "--query", TARGET.text, "-k", "3"])
    assert code == 0
    return capsys.readouterr().out


@pytest.fixture
def uri(tmp_path) -> Path:
    """A Milvus Lite file whose server is stopped after the test."""
    path = tmp_path / "example.db"
    yield path
    release_lite(path)


def check_reranked(out: str, cross_encoder_path: str, normalize: bool) -> None:
    """The printed candidates start with the target; the printed ranking is core's over those candidates."""
    candidates = ast.literal_eval(re.search(r"hybrid candidates: (\[.*\])", out).group(1))
    assert candidates[0] == TARGET.id and len(candidates) == len(set(candidates)) == 10, out
    ranked = re.findall(r"^\d+\. +(-?\d+\.\d+) +(\S+) ", out, flags=re.M)
    texts = {r.id: r.text for r in load_corpus()}
    scores = Reranker(cross_encoder_path, device="cpu").score([(TARGET.text, texts[c]) for c in candidates],
                                                              normalize=normalize)
    best = sorted(zip(scores.tolist(), candidates), key=lambda p: -p[0])[:3]
    assert [doc_id for _, doc_id in ranked] == [doc_id for _, doc_id in best]
    assert [float(s) for s, _ in ranked] == pytest.approx([s for s, _ in best], abs=2e-4)


def test_langchain_hybrid_rag(m3_path, cross_encoder_path, uri, capsys):
    out = run("langchain_hybrid_rag", m3_path, cross_encoder_path, uri, capsys)
    check_reranked(out, cross_encoder_path, normalize=True)
    prompt = out.split("RAG prompt for your LLM:\n", 1)[1]
    assert prompt.rstrip().endswith(f"Human: {TARGET.text}") and prompt.count("\n[") == 3


def test_llamaindex_hybrid_query(m3_path, cross_encoder_path, uri, capsys):
    out = run("llamaindex_hybrid_query", m3_path, cross_encoder_path, uri, capsys)
    check_reranked(out, cross_encoder_path, normalize=False)  # LlamaIndex's reranker keeps raw logits by default


def test_haystack_pipelines(m3_path, cross_encoder_path, uri, capsys):
    out = run("haystack_pipelines", m3_path, cross_encoder_path, uri, capsys)
    assert f"indexed {len(load_corpus())} documents" in out
    check_reranked(out, cross_encoder_path, normalize=True)  # BGERanker scale_score=True


def test_milvus_hybrid_collection(m3_path, cross_encoder_path, uri, capsys):
    run("milvus_hybrid_collection", m3_path, cross_encoder_path, uri, capsys)
    out = run("milvus_hybrid_collection", m3_path, cross_encoder_path, uri, capsys)  # twice: add is idempotent
    assert f"{len(load_corpus())} rows in {uri}" in out, out
    sections = {block.split("\n", 1)[0]: block for block in out.split("\n\n")[1:]}
    assert list(sections) == ["dense", "sparse", "hybrid (RRF)", "hybrid (0.7 dense + 0.3 sparse)",
                              "hybrid, English passages only", "hybrid + ColBERT rerank",
                              "hybrid + cross-encoder rerank"], out
    for name in ("dense", "sparse", "hybrid (RRF)", "hybrid (0.7 dense + 0.3 sparse)"):
        assert re.search(rf"1\. +\S+ +{TARGET.id} ", sections[name]), (name, out)
    assert re.findall(r"\[(\w+)\]", sections["hybrid, English passages only"]) == ["en"] * 3, out


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_every_example_takes_the_same_options(name):
    source = (EXAMPLES / f"{name}.py").read_text(encoding="utf-8")
    for option in ('"--model"', '"--reranker"', '"--uri"', '"--device"', '"--query"'):
        assert option in source, (name, option)
    assert 'if __name__ == "__main__":' in source


def test_langchain_example_does_not_log_the_async_client_warning(m3_path, uri, caplog):
    """langchain-milvus warns on every synchronous `Milvus(...)` that it made no async client; the example's
    construction filters exactly that record, and the filter is gone afterwards."""
    import logging

    module = example("langchain_hybrid_rag")
    with caplog.at_level(logging.WARNING, logger="langchain_milvus"):
        module.build_store(m3_path, str(uri), device="cpu")
    assert not [r for r in caplog.records if "AsyncMilvusClient" in r.getMessage()]
    store_logger = logging.getLogger("langchain_milvus.vectorstores.milvus")
    assert not store_logger.filters
    with caplog.at_level(logging.WARNING, logger="langchain_milvus"):  # without the filter it does warn
        from langchain_milvus import Milvus

        from bge_langchain import BGEEmbeddings

        Milvus(embedding_function=BGEEmbeddings(model_name=m3_path, device="cpu"), connection_args={"uri": str(uri)},
               collection_name="plain", index_params={"index_type": "FLAT", "metric_type": "IP"}, auto_id=True)
    assert [r for r in caplog.records if "AsyncMilvusClient" in r.getMessage()]
