"""langchain-tests' standard suites for `BGEEmbeddings` on the tiny dense checkpoint."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from bge_langchain import BGEEmbeddings

# The suites read their parameters from properties, which cannot take fixtures: the autouse
# fixture below puts the session's tiny checkpoint here before each test runs.
_TINY: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _tiny_checkpoint(dense_path: str) -> None:
    _TINY["model_name"] = dense_path


class TestBGEEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[BGEEmbeddings]:
        return BGEEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_name": _TINY["model_name"], "device": "cpu"}


class TestBGEEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[BGEEmbeddings]:
        return BGEEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_name": _TINY["model_name"], "device": "cpu"}
