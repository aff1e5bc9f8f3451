"""ARCHITECTURE §4 on every entry point: each bad input gives a defined result or a clear error naming the index.

The matrix is cases × entry points (tests/reliability/entry_points.py lists them: core, the
compat classes, and every adapter class of LangChain, LlamaIndex, Haystack and Milvus). In a batch
entry point the bad item sits at index 1, after a good one, so "names the index" is checkable and a
crash mid-batch would show. docs/reliability.md has the same table in words.

| case                         | expected                                                                   |
|------------------------------|----------------------------------------------------------------------------|
| ``""``, whitespace           | a defined result (unit vector / sparse row / finite score)                 |
| emoji, RTL, zero-width, C0   | a defined result                                                           |
| None, bytes, int, nested list| TypeError naming ``[1]`` (batch) / the type (single text); where the       |
|                              | input is a framework Document, the framework's own type check may refuse it |
| lone surrogate              | a clear error naming ``[1]`` and the problem, or a defined result           |
| 10 MB string                 | a defined result within seconds (core cuts before tokenizing);             |
|                              | HybridCollection.add: ValueError naming ``[1]`` (Milvus VARCHAR limit)     |
| over-length, truncate on     | a defined result (cut to max_length)                                       |
| over-length, truncate=False  | ValueError naming index 1 (entry points with the option)                   |
| 100,000 short texts          | 100,000 defined results (core; Haystack's document embedder)               |
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import numpy as np
import pytest

from tests.reliability.entry_points import ENTRY_POINTS, EntryPoint, check_result, feed

#: No case may hang: each test fails after two minutes instead of the suite's ten.
pytestmark = pytest.mark.timeout(120)

GOOD = "BGE turns text into vectors."
LONG = "panda bamboo mountain " * 1500  # thousands of tokens: far beyond max_length=32
HUGE = ("The giant panda eats bamboo. " * 350_000)[:10_000_000]  # 10 MB
SHORT_MAX_LENGTH = 32

DEFINED = {
    "empty": "",
    "whitespace": " \t\n\r ",
    "emoji_rtl_zero_width_control": (
        "🐼🎋 مرحبا עולם \u200b\u200c\u200d\u200e\u200f\u2066x\u2069\ufeff \x00\x07\x1b[31m\x7f"
    ),
}
WRONG_TYPE = {"none": None, "bytes": b"bytes", "int": 42, "nested_list": ["nested"]}
LONE_SURROGATE = "ab\ud800cd"

BATCH = [e for e in ENTRY_POINTS if e.batch]
TRUNCATABLE = [e for e in ENTRY_POINTS if e.truncate_option]
BULK = [e for e in ENTRY_POINTS if e.bulk]



def items_with(entry: EntryPoint, bad: Any) -> list[Any]:
    """The input of a call: ``[GOOD, bad]`` for a batch entry point (bad at index 1), else ``[bad]``."""
    return [GOOD, bad] if entry.batch else [bad]


def run_defined(entry: EntryPoint, obj: Any, items: list[Any]) -> list[Any]:
    results = feed(entry, obj, items)
    assert len(results) == len(items)
    for result in results:
        check_result(entry.output, result)
    return results


@pytest.mark.parametrize("case", sorted(DEFINED))
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=str)
def test_odd_but_valid_text_gives_a_defined_result(built, entry, case):
    run_defined(entry, built(entry), items_with(entry, DEFINED[case]))


@pytest.mark.parametrize("case", sorted(WRONG_TYPE))
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=str)
def test_wrong_types_are_a_type_error_naming_the_index(built, entry, case):
    bad = WRONG_TYPE[case]
    items = items_with(entry, bad)
    obj = built(entry)
    if entry.wrap is not None:
        try:
            entry.wrap(items)
        except (TypeError, ValueError):
            return  # the framework's own Document / Node type refuses it before any adapter code runs
        # The framework took it (LangChain coerces bytes to str, Haystack takes content=None as no
        # text): then the adapter gives a defined result or names the index.
        try:
            results = feed(entry, obj, items)
        except TypeError as error:
            assert re.search(r"\[1\]", str(error)), f"no index in: {error}"
            return
        for result in results:
            check_result(entry.output, result)
        return
    if entry.batch:
        with pytest.raises(TypeError, match=r"\[1\]"):
            feed(entry, obj, items)
    else:
        kinds = (TypeError, ValueError) if case == "none" and "postprocess_nodes" in entry.name else TypeError
        with pytest.raises(kinds):  # LlamaIndex reads query_str=None as "no query": ValueError saying so
            feed(entry, obj, items)


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=str)
def test_lone_surrogates_are_a_clear_error_or_a_defined_result(built, entry):
    items = items_with(entry, LONE_SURROGATE)
    obj = built(entry)
    if entry.wrap is not None:
        try:
            entry.wrap(items)
        except ValueError:
            return  # Haystack's Document hashes its content as UTF-8 and refuses it at construction
    try:
        results = feed(entry, obj, items)
    except (TypeError, ValueError) as error:
        message = str(error)
        assert re.search(r"surrogate|[Uu]nicode|UTF-8", message), f"unclear error: {message}"
        if entry.batch:
            assert re.search(r"\[1\]|index(es)? 1\b|indices \[1\]", message), f"no index in: {message}"
        return
    for result in results:
        check_result(entry.output, result)


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=str)
def test_a_10_mb_string_gives_a_result_in_seconds(built, entry):
    obj = built(entry)
    start = time.perf_counter()
    if entry.name == "milvus.HybridCollection.add":
        # Milvus stores the text in a VARCHAR of at most 65,535 bytes: refused before anything is written.
        with pytest.raises(ValueError, match=r"\[1\]"):
            feed(entry, obj, items_with(entry, HUGE))
    else:
        run_defined(entry, obj, items_with(entry, HUGE))
    assert time.perf_counter() - start < 20, "a 10 MB string must be cut before tokenizing"


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=str)
def test_over_length_text_is_truncated_by_default(built, entry):
    run_defined(entry, built(entry, max_length=SHORT_MAX_LENGTH), items_with(entry, LONG))


@pytest.mark.parametrize("entry", TRUNCATABLE, ids=str)
def test_over_length_text_with_truncation_off_is_a_value_error_naming_the_index(built, entry):
    obj = built(entry, max_length=SHORT_MAX_LENGTH, truncate=False)
    fresh = uuid.uuid4().hex[:6]  # texts no earlier call has seen (BGE-M3 keeps recent results per text)
    with pytest.raises(ValueError, match=r"index 1\b" if entry.batch else r"index 0\b"):
        feed(entry, obj, [f"{GOOD} {fresh}", f"{LONG} {fresh}"] if entry.batch else [f"{LONG} {fresh}"])
    run_defined(entry, obj, items_with(entry, f"short {fresh}"))  # text within the limit still passes


MEMO = [e for e in TRUNCATABLE if "m3_memo" in e.tags]


@pytest.mark.parametrize("entry", MEMO, ids=str)
def test_truncation_off_refuses_a_text_seen_before_with_truncation_on(built, entry):
    long = f"{LONG} {uuid.uuid4().hex}"
    run_defined(entry, built(entry, max_length=SHORT_MAX_LENGTH), items_with(entry, long))  # truncated: fine
    with pytest.raises(ValueError, match="max_length"):
        feed(entry, built(entry, max_length=SHORT_MAX_LENGTH, truncate=False), items_with(entry, long))


@pytest.mark.parametrize("entry", [e for e in MEMO if e.batch], ids=str)
def test_truncation_off_names_the_callers_index_when_other_texts_are_remembered(built, entry):
    obj = built(entry, max_length=SHORT_MAX_LENGTH, truncate=False)
    good, long = f"{GOOD} {uuid.uuid4().hex[:6]}", f"{LONG} {uuid.uuid4().hex[:6]}"
    run_defined(entry, obj, [good])
    with pytest.raises(ValueError, match=r"index 1\b"):
        feed(entry, obj, [good, long])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("entry", BULK, ids=str)
def test_100000_short_texts(built, entry):
    texts = [f"t{i % 997} x" for i in range(100_000)]
    results = feed(entry, built(entry), texts)
    assert len(results) == len(texts)
    matrix = np.asarray(results, dtype=np.float32)
    assert matrix.shape[0] == len(texts) and np.isfinite(matrix).all()
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-3)
    # Same text, same vector, wherever it sits in a batch of 100,000 (texts repeat every 997).
    np.testing.assert_allclose(matrix[5], matrix[5 + 997 * 50], atol=1e-5)


@pytest.mark.parametrize("max_length, query_max_length", [(16, None), (32, 256)])
def test_cross_encoder_query_filling_max_length_is_truncated(cross_encoder_path, max_length, query_max_length):
    from bge_core import Reranker

    reranker = Reranker(cross_encoder_path, device="cpu", max_length=max_length, query_max_length=query_max_length)
    assert np.isfinite(reranker.score([(LONG, "a passage")])).all()


def test_empty_batch_gives_an_empty_result(built):
    for entry in BATCH:
        if entry.name == "milvus.HybridCollection.add":
            assert feed(entry, built(entry), []) == []
            continue
        assert list(feed(entry, built(entry), [])) == [], entry.name
