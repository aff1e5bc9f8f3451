"""`Embedder.encode_token_states`: every token's last-layer state, as the bare transformers model gives it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bge_core import Embedder


def reference_states(path: str, texts: list[str], max_length: int) -> list[np.ndarray]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
            out.append(model(**encoded).last_hidden_state[0].numpy())
    return out


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("which", ["dense_path", "m3_path"])
def test_token_states_equal_the_models_last_hidden_state(request, which, packed, parity_texts):
    path = request.getfixturevalue(which)
    texts = [*parity_texts, ""]  # an empty text still has its special tokens
    model = Embedder(path, device="cpu", packed=packed)
    got = model.encode_token_states(texts)
    for states, expected in zip(got, reference_states(path, texts, model.max_length), strict=True):
        assert states.dtype == np.float32 and states.shape == expected.shape
        assert np.abs(states - expected).max() <= 1e-4


def test_token_states_follow_prompt_max_length_and_truncate(dense_path):
    model = Embedder(dense_path, device="cpu", query_instruction="Represent this: ")
    [query] = model.encode_token_states(["what is BGE?"], prompt="query")
    [plain] = model.encode_token_states("Represent this: what is BGE?")
    assert np.array_equal(query, plain)
    [cut] = model.encode_token_states(["one two three four five six seven"], max_length=4)
    assert cut.shape[0] == 4
    with pytest.raises(ValueError, match="exceed max_length"):
        model.encode_token_states(["one two three four five six seven"], max_length=4, truncate=False)
    with pytest.raises(ValueError, match="unknown prompt"):
        model.encode_token_states(["x"], prompt="passage")
    assert model.encode_token_states([]) == []
