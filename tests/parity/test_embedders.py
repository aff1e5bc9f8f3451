"""Parity with FlagEmbedding 1.4.2 (the oracle) on tiny checkpoints of every embedder family, fp32 CPU."""

from __future__ import annotations

import FlagEmbedding as FE
import numpy as np
import pytest

from bge_core import Embedder, compat
from bge_core.registry import LLM_EMBEDDER_INSTRUCTIONS

COS = 0.99999
TOL = 1e-4


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def assert_dense_parity(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    assert cosines(ours, theirs).min() >= COS
    np.testing.assert_allclose(ours, theirs, atol=TOL)


@pytest.fixture(scope="module")
def fe_m3(m3_path):
    return FE.BGEM3FlagModel(m3_path, devices="cpu", use_fp16=False)


@pytest.fixture(scope="module")
def our_m3(m3_path):
    return compat.BGEM3FlagModel(m3_path, devices="cpu", use_fp16=False)


@pytest.mark.parametrize("max_length", [512, 24])
def test_m3_encode_all_outputs(fe_m3, our_m3, parity_texts, max_length):
    kw = dict(return_dense=True, return_sparse=True, return_colbert_vecs=True, max_length=max_length)
    theirs, ours = fe_m3.encode(parity_texts, **kw), our_m3.encode(parity_texts, **kw)
    assert_dense_parity(ours["dense_vecs"], theirs["dense_vecs"])
    for i, (a, b) in enumerate(zip(ours["lexical_weights"], theirs["lexical_weights"], strict=True)):
        assert set(a) == set(b), f"lexical keys differ for text {i}"
        assert list(a) == list(b), f"lexical keys of text {i} are not in FlagEmbedding's (reading) order"
        assert type(a) is type(b) and all(type(a[k]) is type(b[k]) for k in a)  # defaultdict, str → np.float32
        for key in a:
            assert abs(float(a[key]) - float(b[key])) <= TOL
    for a, b in zip(ours["colbert_vecs"], theirs["colbert_vecs"], strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=TOL)
    # the sparse head really fires: most non-empty texts have lexical weights
    assert sum(bool(w) for w in ours["lexical_weights"]) >= len(parity_texts) - 2


def test_m3_single_string_and_query_instruction(m3_path, parity_texts):
    kw = dict(devices="cpu", use_fp16=False, query_instruction_for_retrieval="Q: ")
    fe, ours = FE.BGEM3FlagModel(m3_path, **kw), compat.BGEM3FlagModel(m3_path, **kw)
    a = ours.encode_queries(parity_texts[0], return_sparse=True)
    b = fe.encode_queries(parity_texts[0], return_sparse=True)
    assert a["dense_vecs"].ndim == 1
    assert_dense_parity(a["dense_vecs"], b["dense_vecs"])
    assert set(a["lexical_weights"]) == set(b["lexical_weights"])
    assert_dense_parity(ours.encode_corpus(parity_texts)["dense_vecs"], fe.encode_corpus(parity_texts)["dense_vecs"])
    # the instruction really changes the query vector, exactly as FlagEmbedding does
    plain = ours.encode(parity_texts[0])["dense_vecs"]
    assert cosines(plain, a["dense_vecs"])[0] < 0.9999


@pytest.mark.parametrize("weights", [None, [0.4, 0.2, 0.4]])
def test_m3_compute_score(fe_m3, our_m3, parity_texts, weights):
    pairs = [(parity_texts[i], parity_texts[(i + 3) % len(parity_texts)]) for i in range(len(parity_texts))]
    pairs.append((parity_texts[1], parity_texts[1]))
    kw = dict(weights_for_different_modes=weights, max_passage_length=48, batch_size=4)
    theirs, ours = fe_m3.compute_score(pairs, **kw), our_m3.compute_score(pairs, **kw)
    assert set(ours) == {"colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"}
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], atol=TOL, err_msg=key)
    one = our_m3.compute_score(pairs[0])
    assert isinstance(one["dense"], float)
    assert one["dense"] == pytest.approx(fe_m3.compute_score(pairs[0])["dense"], abs=TOL)


def test_m3_scoring_helpers(fe_m3, our_m3, parity_texts):
    kw = dict(return_sparse=True, return_colbert_vecs=True)
    a, b = our_m3.encode(parity_texts[:3], **kw), fe_m3.encode(parity_texts[:3], **kw)
    lex_ours = our_m3.compute_lexical_matching_score(a["lexical_weights"], a["lexical_weights"])
    lex_theirs = fe_m3.compute_lexical_matching_score(b["lexical_weights"], b["lexical_weights"])
    np.testing.assert_allclose(lex_ours, lex_theirs, atol=TOL)
    assert float(our_m3.colbert_score(a["colbert_vecs"][0], a["colbert_vecs"][1])) == pytest.approx(
        float(fe_m3.colbert_score(b["colbert_vecs"][0], b["colbert_vecs"][1])), abs=TOL
    )
    ours = our_m3.convert_id_to_token(a["lexical_weights"][0])
    theirs = fe_m3.convert_id_to_token(b["lexical_weights"][0])
    assert list(ours) == list(theirs)  # same tokens, same order (colliding strings: the same one wins)
    assert all(abs(float(ours[k]) - float(theirs[k])) <= TOL for k in ours)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_dense_flag_model(dense_path, parity_texts, pooling):
    kw = dict(devices="cpu", use_fp16=False, pooling_method=pooling,
              query_instruction_for_retrieval="Represent this sentence for searching relevant passages: ")
    fe, ours = FE.FlagModel(dense_path, **kw), compat.FlagModel(dense_path, **kw)
    assert_dense_parity(ours.encode_queries(parity_texts), fe.encode_queries(parity_texts))
    assert_dense_parity(ours.encode_corpus(parity_texts), fe.encode_corpus(parity_texts))
    assert_dense_parity(ours.encode(parity_texts, max_length=16), fe.encode(parity_texts, max_length=16))
    assert ours.encode(parity_texts[0]).shape == fe.encode(parity_texts[0]).shape


@pytest.mark.parametrize("task", sorted(LLM_EMBEDDER_INSTRUCTIONS))
def test_llm_embedder_task_instructions(dense_path, parity_texts, task):
    query, key = LLM_EMBEDDER_INSTRUCTIONS[task]
    fe = FE.FlagModel(dense_path, devices="cpu", use_fp16=False, query_instruction_for_retrieval=query,
                      passage_instruction_for_retrieval=key)
    ours = Embedder(dense_path, device="cpu", task=task)
    assert_dense_parity(ours.encode_queries(parity_texts).dense, fe.encode_queries(parity_texts))
    assert_dense_parity(ours.encode_documents(parity_texts).dense, fe.encode_corpus(parity_texts))


def test_llm_embedder_gemma2_style(llm_embedder_path, parity_texts):
    kw = dict(devices="cpu", use_fp16=False, query_instruction_for_retrieval="Given a web search query",
              query_instruction_format="<instruct>{}\n<query>{}")
    fe, ours = FE.FlagLLMModel(llm_embedder_path, **kw), compat.FlagLLMModel(llm_embedder_path, **kw)
    assert_dense_parity(ours.encode_queries(parity_texts), fe.encode_queries(parity_texts))
    assert_dense_parity(ours.encode_corpus(parity_texts, max_length=20), fe.encode_corpus(parity_texts, max_length=20))


def test_icl_queries_with_examples(llm_embedder_path, parity_texts):
    examples = [
        {"instruct": "Find the animal", "query": "what do pandas eat", "response": "Pandas eat bamboo."},
        {"query": "capital of France", "response": "Paris is the capital of France."},
    ]
    kw = dict(devices="cpu", use_fp16=False, query_instruction_for_retrieval="Given a question, find answers",
              examples_for_task=examples)
    fe, ours = FE.FlagICLModel(llm_embedder_path, **kw), compat.FlagICLModel(llm_embedder_path, **kw)
    for max_length in (512, 40):
        assert_dense_parity(ours.encode_queries(parity_texts, max_length=max_length),
                            fe.encode_queries(parity_texts, max_length=max_length))
    assert_dense_parity(ours.encode_corpus(parity_texts), fe.encode_corpus(parity_texts))


def test_auto_model_picks_the_family(m3_path, dense_path):
    assert isinstance(compat.FlagAutoModel.from_finetuned(m3_path, devices="cpu"), compat.BGEM3FlagModel)
    assert type(compat.FlagAutoModel.from_finetuned(dense_path, devices="cpu")) is compat.FlagModel
    forced = compat.FlagAutoModel.from_finetuned(m3_path, model_class="encoder-only-base", devices="cpu")
    assert type(forced) is compat.FlagModel
