"""Token ids straight from a fast tokenizer's Rust backend.

``tokenizer(texts)`` in transformers wraps every result in Python objects (encodings, dicts, masks)
while holding the GIL. On a GPU run that wrapping, not the tokenizer itself, is what competes with the
thread launching kernels: for 20,000 passages it is most of the tokenization time. For a stock fast
tokenizer the same ids come from the backend directly, under the truncation and padding settings
transformers itself would set; any other tokenizer goes through its own ``__call__``.
"""

from __future__ import annotations

import json
import os
from typing import Any

try:  # transformers 5: every fast tokenizer is a TokenizersBackend
    from transformers.tokenization_utils_tokenizers import TokenizersBackend
except ImportError:  # transformers 4: no backend shortcut, the public call is used
    TokenizersBackend = None

# The methods between `tokenizer(...)` and the backend call; a subclass overriding any of them may
# change the text or the ids, so it keeps its own path.
_CALL_PATH = ("__call__", "_call_one", "_encode_plus", "set_truncation_and_padding", "_convert_encoding")
_DECODE_PATH = ("batch_decode", "decode", "_decode")
#: The tokenizer class transformers registers for each encoder type `load_tokenizer` opens directly.
_ENCODER_TOKENIZERS = {"bert": "BertTokenizer", "xlm-roberta": "XLMRobertaTokenizer", "roberta": "RobertaTokenizer"}
#: Names of the generic fast tokenizer (tokenizer.json alone) in tokenizer_config.json.
_GENERIC_FAST = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str) -> Any:
    """``AutoTokenizer.from_pretrained(path, trust_remote_code=False)``, without its import where the
    answer is plain: a BERT / XLM-R / RoBERTa checkpoint whose tokenizer_config.json (no ``auto_map``)
    names that model type's own class, or the generic fast tokenizer, gets that class, as `AutoTokenizer`
    gives it. In transformers 5 the `AutoTokenizer` module imports the auto-model factory, and with it the
    generation, masking and distributed stacks (scikit-learn, pandas, torch._dynamo): ~2.7 s of a GPU
    host's `bge eval`, for a class name. Anything else goes through `AutoTokenizer`.

    Example:
        >>> load_tokenizer("./bge-small-en-v1.5")  # doctest: +SKIP
        BertTokenizer(name_or_path='./bge-small-en-v1.5', ...)
    """
    cls = _plain_tokenizer_class(path)
    if cls is not None:
        return cls.from_pretrained(path, trust_remote_code=False)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def _plain_tokenizer_class(path: str) -> type | None:
    """The class `AutoTokenizer` picks for an encoder checkpoint that declares its own (see `load_tokenizer`)."""
    if TokenizersBackend is None:
        return None
    try:
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as fh:
            declared = json.load(fh)
        with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
            own = _ENCODER_TOKENIZERS.get(json.load(fh).get("model_type"))
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(declared, dict) or own is None or "auto_map" in declared:
        return None
    named = declared.get("tokenizer_class")
    if named in _GENERIC_FAST:
        return TokenizersBackend
    if not isinstance(named, str) or named.removesuffix("Fast") != own:
        return None
    import transformers

    cls = getattr(transformers, own, None)
    return cls if isinstance(cls, type) and issubclass(cls, TokenizersBackend) else None


def backend_of(tokenizer: Any, path: tuple[str, ...] = _CALL_PATH) -> Any | None:
    """The Rust tokenizer of a stock transformers fast tokenizer (none of the methods in `path`
    overridden), else None.

    Example:
        >>> backend_of(object()) is None
        True
    """
    if TokenizersBackend is None or not isinstance(tokenizer, TokenizersBackend):
        return None
    cls = type(tokenizer)
    if any(getattr(cls, name, None) is not getattr(TokenizersBackend, name, None) for name in path):
        return None
    return tokenizer.backend_tokenizer


def encode_ids(
    tokenizer: Any,
    inputs: list[str] | list[tuple[str, str]],
    *,
    max_length: int | None,
    strategy: str = "longest_first",
    add_special_tokens: bool = True,
) -> list[list[int]]:
    """Token ids of texts (or text pairs), exactly as ``tokenizer(..., truncation=strategy)`` gives them.

    `max_length=None` means no truncation. The caller holds the tokenizer lock: the backend's
    truncation state is shared.

    Example:
        >>> encode_ids(tokenizer, ["hello world"], max_length=512)  # doctest: +SKIP
        [[0, 33600, 8999, 2]]
    """
    backend = backend_of(tokenizer)
    if backend is None:
        kwargs: dict[str, Any] = dict(add_special_tokens=add_special_tokens, return_attention_mask=False,
                                      return_token_type_ids=False)
        if max_length is not None:
            kwargs.update(truncation=strategy, max_length=max_length)
        if inputs and isinstance(inputs[0], tuple):
            return tokenizer([a for a, _ in inputs], [b for _, b in inputs], **kwargs)["input_ids"]
        return tokenizer(list(inputs), **kwargs)["input_ids"]
    if max_length is None:
        if backend.truncation is not None:
            backend.no_truncation()
    else:
        target = dict(max_length=max_length, stride=0, strategy=strategy, direction=tokenizer.truncation_side)
        current = backend.truncation
        if current is None or {k: current.get(k) for k in target} != target:
            backend.enable_truncation(**target)
    if backend.padding is not None:
        backend.no_padding()
    split = bool(tokenizer.split_special_tokens)
    if backend.encode_special_tokens != split:
        backend.encode_special_tokens = split
    # encode_batch_fast skips character offsets, which only ids-consumers never read.
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [e.ids for e in encode(inputs, add_special_tokens=add_special_tokens)]


def decode_ids(tokenizer: Any, rows: list[list[int]]) -> list[str]:
    """``tokenizer.batch_decode(rows, skip_special_tokens=False, clean_up_tokenization_spaces=False)``,
    decoded in one backend call where the tokenizer is stock.

    Example:
        >>> decode_ids(tokenizer, [[33600, 8999]])  # doctest: +SKIP
        ['hello world']
    """
    if not rows:
        return []
    backend = backend_of(tokenizer, _DECODE_PATH)
    if backend is None:
        return tokenizer.batch_decode(rows, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return backend.decode_batch(rows, skip_special_tokens=False)
