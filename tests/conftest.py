"""Session-wide tiny checkpoints (built once per test run) and test-environment settings."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.fixtures import checkpoints  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def dense_path(checkpoint_dir) -> str:
    return checkpoints.build_bert_dense(str(checkpoint_dir / "bge-tiny-en"))


@pytest.fixture(scope="session")
def m3_path(checkpoint_dir) -> str:
    return checkpoints.build_m3(str(checkpoint_dir / "bge-m3-tiny"))


@pytest.fixture(scope="session")
def cross_encoder_path(checkpoint_dir) -> str:
    return checkpoints.build_cross_encoder(str(checkpoint_dir / "bge-reranker-tiny"))


@pytest.fixture(scope="session")
def llm_embedder_path(checkpoint_dir) -> str:
    return checkpoints.build_llm_embedder(str(checkpoint_dir / "bge-llm-tiny"))


#: Texts every parity test runs: multilingual, emoji, control and zero-width characters, empty, long.
PARITY_TEXTS = [
    "BGE models turn text into vectors for retrieval.",
    "The giant panda is a bear native to south central China.",
    "大熊猫是中国特有的熊科动物，主要以竹子为食。",
    "مرحبا بالعالم، البحث الدلالي يستخدم المتجهات.",
    "Emoji are text too 🐼🎋🔎✨",
    "zero\u200bwidth and\tcontrol\x07chars",
    "",
    " ".join(["Milvus is a vector database built for similarity search."] * 120),
]


@pytest.fixture
def parity_texts() -> list[str]:
    return list(PARITY_TEXTS)
