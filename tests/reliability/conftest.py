"""Fixtures of the reliability suite: the session's tiny checkpoints of every family, and each entry
point's object built once per module (tests/reliability/entry_points.py lists the entry points)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.reliability.entry_points import EntryPoint, Models


@pytest.fixture(scope="session")
def llm_reranker_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from tests.fixtures import llm_rerankers

    root = tmp_path_factory.mktemp("reliability-llm-rerankers")
    return {
        "gemma": llm_rerankers.build_gemma_reranker(root / "gemma"),
        "layerwise": llm_rerankers.build_layerwise_reranker(root / "layerwise"),
        "lightweight": llm_rerankers.build_lightweight_reranker(root / "lightweight"),
    }


@pytest.fixture(scope="session")
def models(m3_path, dense_path, cross_encoder_path, llm_embedder_path, llm_reranker_paths,
           tmp_path_factory) -> Models:
    return Models(
        m3=m3_path, dense=dense_path, cross_encoder=cross_encoder_path, llm_embedder=llm_embedder_path,
        llm_reranker=llm_reranker_paths["gemma"], layerwise=llm_reranker_paths["layerwise"],
        lightweight=llm_reranker_paths["lightweight"], milvus_dir=str(tmp_path_factory.mktemp("reliability-milvus")),
    )


@pytest.fixture(scope="module")
def built(models):
    """``built(entry_point, **options)``: the entry point's object, made once per module and options."""
    cache: dict[tuple, Any] = {}

    def get(entry: EntryPoint, **options: Any) -> Any:
        if not entry.truncate_option:
            options.pop("truncate", None)
        key = (entry.name, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = entry.build(models, **options)
        return cache[key]

    yield get
    for obj in cache.values():
        close = getattr(obj, "close", None)
        if callable(close):
            close()
