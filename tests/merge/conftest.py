"""Several different tiny models of each family (same architecture, different seeds) and a few examples."""

from __future__ import annotations

import pytest

from tests.fixtures import checkpoints, llm_rerankers

CORPUS = checkpoints.CORPUS


@pytest.fixture(scope="session")
def merge_root(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("merge-models")


def _models(root, name: str, build, seeds: tuple[int, ...]) -> list[str]:
    return [str(build(str(root / f"{name}-seed{seed}"), seed=seed)) for seed in seeds]


@pytest.fixture(scope="session")
def dense_models(merge_root) -> list[str]:
    return _models(merge_root, "dense", checkpoints.build_bert_dense, (1, 2, 3))


@pytest.fixture(scope="session")
def m3_models(merge_root) -> list[str]:
    return _models(merge_root, "m3", checkpoints.build_m3, (1, 2))


@pytest.fixture(scope="session")
def reranker_models(merge_root) -> list[str]:
    return _models(merge_root, "reranker", checkpoints.build_cross_encoder, (1, 2))


@pytest.fixture(scope="session")
def decoder_models(merge_root) -> list[str]:
    return _models(merge_root, "decoder", llm_rerankers.build_gemma_reranker, (1, 2))


@pytest.fixture(scope="session")
def retrieval_examples() -> list[dict]:
    """Five {"query", "pos", "neg"} examples with five negatives each."""
    out = []
    for i in range(5):
        others = [t for j, t in enumerate(CORPUS) if j not in (i, i + 1)]
        out.append({"query": CORPUS[i], "pos": [CORPUS[i + 1]], "neg": others[i:i + 5]})
    return out


@pytest.fixture(scope="session")
def decoder_examples() -> list[dict]:
    return [
        {"input": "A: what is panda?\nB:", "output": "The giant panda is a bear species endemic to China."},
        {"input": "Where is the Eiffel tower?", "output": "The Eiffel Tower stands in Paris."},
        {"input": "Translate: the quick brown fox", "output": "Der schnelle braune Fuchs"},
        {"input": "Yes or No?", "output": "Yes"},
        {"input": "熊猫吃什么？", "output": "大熊猫主要吃竹子。"},
    ]
