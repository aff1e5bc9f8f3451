"""Fixtures of the Haystack adapter tests: CPU device, fresh texts, the env-var token dict."""

from __future__ import annotations

import uuid

import pytest
from haystack.utils import ComponentDevice

#: What `Secret.from_env_var(["HF_API_TOKEN", "HF_TOKEN"], strict=False).to_dict()` gives.
TOKEN_DICT = {"type": "env_var", "env_vars": ["HF_API_TOKEN", "HF_TOKEN"], "strict": False}


@pytest.fixture
def cpu() -> ComponentDevice:
    return ComponentDevice.from_str("cpu")


@pytest.fixture
def fresh() -> str:
    """A tag that makes texts unseen by core's output memo, so forward passes can be counted."""
    return uuid.uuid4().hex[:8]
