"""Property tests (hypothesis) of the tokenizer → engine → head path on random Unicode.

Any valid Unicode text — every plane, combining marks, controls, RTL, private use, noncharacters —
gives a finite, unit-length dense vector of the model's dimension and a well-formed sparse row, and the
same vector whether it is encoded alone or in a batch. Text holding a lone surrogate (not valid Unicode;
Python strs can hold one, e.g. from ``bytes.decode(errors="surrogateescape")``) gives either a defined
result or a clear error naming the index.

Examples are derandomized (the same on every run, so CI is stable) and kept few enough that the file runs
in a few seconds; `HYPOTHESIS_PROFILE=explore` runs many more, freshly random ones.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bge_core import Embedder, Reranker

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "explore", max_examples=1000, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

#: Valid Unicode only: hypothesis's text() never draws surrogates (category Cs).
texts = st.text(alphabet=st.characters(codec=None), max_size=300)
batches = st.lists(texts, min_size=1, max_size=4)
#: A valid text with one lone surrogate inside.
with_surrogate = st.builds(
    lambda head, surrogate, tail: head + surrogate + tail,
    st.text(max_size=40), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.text(max_size=40),
)


@pytest.fixture(scope="module")
def embedders(m3_path, dense_path, llm_embedder_path):
    # reuse_outputs=False: every example runs the model (no result comes from the memo).
    return {
        "m3": Embedder(m3_path, device="cpu", reuse_outputs=False, max_length=64),
        "dense": Embedder(dense_path, device="cpu", max_length=64),
        "llm_embedder": Embedder(llm_embedder_path, device="cpu", max_length=64),
    }


def check_dense(matrix: np.ndarray, n: int, dim: int) -> None:
    assert matrix.shape == (n, dim) and matrix.dtype == np.float32
    assert np.isfinite(matrix).all()
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("family", ["m3", "dense", "llm_embedder"])
def test_any_valid_unicode_gives_finite_unit_vectors_independent_of_the_batch(embedders, family):
    model = embedders[family]

    @settings(settings.get_profile(PROFILE))
    @given(batch=batches)
    def check(batch: list[str]) -> None:
        out = model.encode(batch, sparse=family == "m3")
        check_dense(out.dense, len(batch), model.dim)
        alone = model.encode(batch[-1:]).dense  # the last text again, without its batch company
        np.testing.assert_allclose(out.dense[-1:], alone, atol=1e-5)  # see test_determinism for why not exact
        if family == "m3":
            assert len(out.lexical_weights) == len(batch)
            for row in out.lexical_weights:
                assert all(0 <= k < model.vocab_size and k != model.pad_token_id for k in row)
                assert all(np.isfinite(w) and w > 0 for w in row.values())

    check()


def test_any_valid_unicode_pair_gives_a_finite_score(cross_encoder_path):
    reranker = Reranker(cross_encoder_path, device="cpu", max_length=64)

    @settings(settings.get_profile(PROFILE))
    @given(pairs=st.lists(st.tuples(texts, texts), min_size=1, max_size=4))
    def check(pairs: list[tuple[str, str]]) -> None:
        scores = reranker.score(pairs)
        assert scores.shape == (len(pairs),) and np.isfinite(scores).all()

    check()


def test_a_lone_surrogate_gives_a_defined_result_or_a_clear_error_naming_the_index(embedders):
    model = embedders["m3"]

    @settings(settings.get_profile(PROFILE), max_examples=10)
    @given(good=texts, bad=with_surrogate)
    def check(good: str, bad: str) -> None:
        try:
            out = model.encode([good, bad], sparse=True)
        except (TypeError, ValueError) as error:
            message = str(error)
            assert re.search(r"\[1\]|index 1\b", message) and re.search(r"surrogate|[Uu]nicode|UTF-8", message), (
                f"unclear error: {message}"
            )
            return
        check_dense(out.dense, 2, model.dim)

    check()
