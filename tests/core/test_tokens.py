"""The backend shortcut gives exactly the ids and texts of the tokenizer's own public calls."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from bge_core.engine.tokens import backend_of, decode_ids, encode_ids
from tests.conftest import PARITY_TEXTS

TEXTS = [*PARITY_TEXTS, "  leading and trailing  ", "<s> looks special </s>", "a" * 3000, "\n\n"]


@pytest.fixture(scope="module", params=["m3", "llm"])
def tokenizer(request, m3_path, llm_embedder_path):
    return AutoTokenizer.from_pretrained(m3_path if request.param == "m3" else llm_embedder_path)


def test_stock_tokenizer_takes_the_backend_path(tokenizer) -> None:
    assert backend_of(tokenizer) is tokenizer.backend_tokenizer


@pytest.mark.parametrize("max_length", [None, 8, 64, 512])
def test_single_texts_match_the_public_call(tokenizer, max_length) -> None:
    kwargs = {} if max_length is None else dict(truncation=True, max_length=max_length)
    expected = tokenizer(TEXTS, **kwargs)["input_ids"]
    assert encode_ids(tokenizer, TEXTS, max_length=max_length) == expected
    expected = tokenizer(TEXTS, add_special_tokens=False, **kwargs)["input_ids"]
    assert encode_ids(tokenizer, TEXTS, max_length=max_length, add_special_tokens=False) == expected


@pytest.mark.parametrize("max_length", [32, 128, 512])
def test_pairs_match_the_public_call_only_second(tokenizer, max_length) -> None:
    queries = ["what is a panda", "q", "大熊猫"] * 4
    passages = TEXTS[:12]
    pairs = [(q, p) for q, p in zip(queries, passages) if p]
    expected = tokenizer([q for q, _ in pairs], [p for _, p in pairs], truncation="only_second",
                         max_length=max_length)["input_ids"]
    assert encode_ids(tokenizer, pairs, max_length=max_length, strategy="only_second") == expected


def test_settings_left_by_other_calls_do_not_leak(tokenizer) -> None:
    """Padding or truncation set on the shared backend by earlier calls never reaches our ids."""
    tokenizer(TEXTS, padding="max_length", truncation=True, max_length=16)
    tokenizer.backend_tokenizer.enable_padding(length=40)
    assert encode_ids(tokenizer, TEXTS, max_length=None) == tokenizer(TEXTS)["input_ids"]
    assert all(len(ids) <= 12 for ids in encode_ids(tokenizer, TEXTS, max_length=12))


def test_decode_matches_batch_decode(tokenizer) -> None:
    rows = tokenizer(TEXTS, add_special_tokens=True, truncation=True, max_length=20)["input_ids"]
    expected = tokenizer.batch_decode(rows, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert decode_ids(tokenizer, rows) == expected
    assert decode_ids(tokenizer, []) == []


def test_a_subclass_that_changes_the_call_keeps_its_own_path(m3_path) -> None:
    base = type(AutoTokenizer.from_pretrained(m3_path))

    class Shouting(base):
        def _encode_plus(self, text, *args, **kwargs):  # upper-cases every text before encoding
            text = [t.upper() for t in text] if isinstance(text, list) else text.upper()
            return super()._encode_plus(text, *args, **kwargs)

    shouting = Shouting.from_pretrained(m3_path)
    assert backend_of(shouting) is None
    assert encode_ids(shouting, ["hello world"], max_length=16) == shouting(["HELLO WORLD"])["input_ids"]
