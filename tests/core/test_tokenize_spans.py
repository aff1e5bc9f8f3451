"""`ModelHandle.tokenize` / `decode`: the tokens a user sees, with character spans, beside the engine's ids."""

from __future__ import annotations

import threading

import pytest

from bge_core import Embedder, Reranker, Token


@pytest.fixture(scope="module")
def m3(m3_path: str) -> Embedder:
    return Embedder(m3_path, device="cpu", reuse_outputs=False)  # every encode runs a forward


def test_tokens_match_the_tokenizer_and_spans_point_into_the_text(m3: Embedder) -> None:
    text = "The giant panda 🐼 is a bear."
    tokens = m3.tokenize(text)[0]
    assert [t.id for t in tokens] == m3.tokenizer(text)["input_ids"]
    assert tokens[0].special and tokens[-1].special and tokens[0].text == m3.tokenizer.cls_token
    for token in tokens[1:-1]:
        assert not token.special
        assert token.text == text[token.start : token.stop]
    assert "".join(t.text for t in tokens[1:-1]).replace(" ", "") == text.replace(" ", "")
    assert all(isinstance(t, Token) for t in tokens)


def test_without_special_tokens_max_length_and_empty(m3: Embedder) -> None:
    plain = m3.tokenize(["hello world", ""], add_special_tokens=False)
    assert not any(t.special for t in plain[0]) and plain[1] == []
    cut = m3.tokenize(" ".join(["panda"] * 100), max_length=8)[0]
    assert len(cut) == 8 and cut[-1].special


def test_count_tokens_is_the_length_of_each_tokenized_text(m3: Embedder, cross_encoder_path: str) -> None:
    texts = ["The giant panda 🐼 is a bear.", "", " ".join(["panda"] * 300)]
    assert m3.count_tokens(texts) == [len(row) for row in m3.tokenize(texts)]
    assert m3.count_tokens(texts, max_length=16) == [len(row) for row in m3.tokenize(texts, max_length=16)]
    assert m3.count_tokens(texts, max_length=16)[2] == 16 and m3.count_tokens("") == [2]
    assert m3.count_tokens([]) == []
    reranker = Reranker(cross_encoder_path, device="cpu")
    assert reranker.count_tokens("a passage") == [len(reranker.tokenize("a passage")[0])]


def test_decode_inverts_tokenize_and_names_bad_ids(m3: Embedder) -> None:
    ids = [t.id for t in m3.tokenize("The quick brown fox")[0]]
    assert m3.decode([ids]) == ["The quick brown fox"]
    assert m3.decode([ids], skip_special_tokens=False)[0].startswith(m3.tokenizer.cls_token)
    with pytest.raises(ValueError, match=r"ids\[1\] holds 99999"):
        m3.decode([ids, [99999]])
    with pytest.raises(TypeError, match=r"ids\[0\]"):
        m3.decode([["a"]])


def test_tokenize_leaves_the_engine_tokenizer_alone_under_threads(m3: Embedder, cross_encoder_path: str) -> None:
    """User tokenization with a short max_length must not change what the engine computes meanwhile."""
    texts = [" ".join(["Milvus vector search"] * 30)] * 8
    expected = m3.encode(texts).dense
    errors: list[BaseException] = []

    def spam() -> None:
        try:
            for _ in range(50):
                m3.tokenize(texts, max_length=4)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    thread = threading.Thread(target=spam)
    thread.start()
    for _ in range(5):
        assert (m3.encode(texts).dense == expected).all()
    thread.join()
    assert not errors
    reranker = Reranker(cross_encoder_path, device="cpu")
    assert reranker.tokenize("hello")[0][0].special
