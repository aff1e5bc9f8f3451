"""Shared pieces of the bge_milvus tests: one CPU copy of the tiny BGE-M3 and the hello-hybrid corpus."""

from __future__ import annotations

import random
import string

import pytest

from bge_core import Embedder

#: The three sentences of pymilvus's hello_hybrid_sparse_dense.py example.
RELEVANT = [
    "Artificial intelligence was founded as an academic discipline in 1956.",
    "Alan Turing was the first person to conduct substantial research in AI.",
    "Born in Maida Vale, London, Turing was raised in southern England.",
]


def distractors(n: int = 1000, seed: int = 0) -> list[str]:
    """Cheap random short 'sentences' of random lowercase words, as the example's random strings."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8))) for _ in range(300)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 8))) for _ in range(n)]


@pytest.fixture(scope="session")
def m3(m3_path: str) -> Embedder:
    return Embedder(m3_path, device="cpu")


@pytest.fixture(scope="session")
def hello_corpus() -> list[str]:
    return RELEVANT + distractors()
