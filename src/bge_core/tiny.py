"""Tiny, randomly initialised BGE-M3 and cross-encoder checkpoints, built on this machine without a network.

`bge demo` falls back on them when the real weights cannot be downloaded, so that the whole
pipeline (tokenizer, engine, heads, Milvus Lite, reranking) still runs and proves the installation.
Their outputs mean nothing. They have the exact file layout of the released models (config.json,
model.safetensors, a tokenizer, and BGE-M3's colbert_linear.pt / sparse_linear.pt), with a
SentencePiece-style tokenizer trained here with the `tokenizers` library on the texts it will see.

Checkpoints are cached under ``$BGE_PLUGINS_CACHE`` (default ``~/.cache/bge-plugins``); each is
built in a temporary folder and renamed into place, so concurrent runs never see half a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence

#: Bump when the layout or the recipe changes, so old caches are not reused.
VERSION = "v2"
HIDDEN = 32
#: Large init: with the default 0.02 a tiny random encoder gives nearly one vector for every text.
INIT = 0.5
MARKER = "RANDOM_WEIGHTS.txt"


def cache_root() -> str:
    """Where the tiny checkpoints are kept: ``$BGE_PLUGINS_CACHE``, else ``$XDG_CACHE_HOME/bge-plugins``,
    else ``~/.cache/bge-plugins``.

    Example:
        >>> cache_root()
        '/home/me/.cache/bge-plugins'
    """
    if os.environ.get("BGE_PLUGINS_CACHE"):
        return os.environ["BGE_PLUGINS_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bge-plugins")


def tiny_m3(texts: Sequence[str], root: str | None = None) -> str:
    """Directory of a tiny random BGE-M3 (XLM-R backbone + ColBERT and sparse heads); built once.

    Args:
        texts: what the tokenizer is trained on (the texts the demo will embed).
        root: cache folder (default `cache_root()`).

    Example:
        >>> Embedder(tiny_m3(["some text", "other text"])).encode(["some text"], sparse=True)
    """
    return _cached("bge-m3-random-tiny", texts, root, build_m3)


def tiny_cross_encoder(texts: Sequence[str], root: str | None = None) -> str:
    """Directory of a tiny random cross-encoder in bge-reranker-v2-m3's layout; built once.

    Example:
        >>> Reranker(tiny_cross_encoder(["q", "p"])).score([("q", "p")])
    """
    return _cached("bge-reranker-random-tiny", texts, root, build_cross_encoder)


def _cached(name: str, texts: Sequence[str], root: str | None, build: Callable[[str, list[str]], str]) -> str:
    parent = os.path.join(root or cache_root(), f"random-tiny-{VERSION}")
    final = os.path.join(parent, name)
    if os.path.exists(os.path.join(final, MARKER)):
        return final
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError:  # a read-only home: the temporary folder will do
        parent = os.path.join(tempfile.gettempdir(), "bge-plugins", f"random-tiny-{VERSION}")
        final = os.path.join(parent, name)
        if os.path.exists(os.path.join(final, MARKER)):
            return final
        os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(dir=parent, prefix=f".{name}.")
    try:
        build(work, list(texts))
        with open(os.path.join(work, MARKER), "w", encoding="utf-8") as fh:
            fh.write("Randomly initialised weights built by bge-plugins (bge_core.tiny). Outputs are meaningless.\n")
        try:
            os.replace(work, final)
        except OSError:
            if not os.path.exists(os.path.join(final, MARKER)):  # not a concurrent build that won the race
                raise
    finally:
        if os.path.exists(work):
            shutil.rmtree(work, ignore_errors=True)
    return final


def xlmr_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> object:
    """A SentencePiece-style (Metaspace) subword tokenizer with XLM-R's special tokens and ids,
    trained on `texts`; the same texts give the same tokenizer in every process.

    BPE rather than Unigram: the `tokenizers` Unigram and WordPiece trainers break ties in hash
    order and learn a different vocabulary in every process. BPE learns the same merges but numbers
    its alphabet in hash order, so ids are renumbered in sorted token order. Characters never seen
    in training become <unk>, as in XLM-R.

    Example:
        >>> xlmr_tokenizer(["hello world"])("hello")["input_ids"][0]
        0
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False
    )
    corpus = list(texts) or ["bge"]
    tok.train_from_iterator((t for _ in range(5) for t in corpus), trainer=trainer)
    tok = canonical_ids(tok)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        cls_token="<s>", sep_token="</s>", mask_token="<mask>", model_max_length=1024,
    )


def canonical_ids(tok: object) -> object:
    """The same `tokenizers.Tokenizer` with ids in sorted token order (special tokens keep theirs)."""
    import json

    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    special = {t["content"] for t in spec["added_tokens"]}
    fixed = {t: i for t, i in vocab.items() if t in special}
    rest = sorted(t for t in vocab if t not in special)
    taken = set(fixed.values())
    free = [i for i in range(len(vocab)) if i not in taken]
    spec["model"]["vocab"] = {**fixed, **dict(zip(rest, free))}
    return Tokenizer.from_str(json.dumps(spec))


def _config(vocab_size: int, init: float = INIT, **extra: object) -> object:
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=1024 + 2, type_vocab_size=1, layer_norm_eps=1e-5, initializer_range=init,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, **extra,
    )


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    import torch

    with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
        torch.manual_seed(seed)
        yield


def build_m3(path: str, texts: list[str], seed: int = 0, init: float = INIT, vocab_size: int = 2000) -> str:
    """Write a tiny random BGE-M3 (XLM-R backbone, ColBERT and sparse heads) into `path`.

    Example:
        >>> build_m3("/tmp/m3", ["some text"])
        '/tmp/m3'
    """
    import torch
    from transformers import XLMRobertaModel

    tokenizer = xlmr_tokenizer(texts, vocab_size)
    with _seeded(seed):
        model = XLMRobertaModel(_config(len(tokenizer), init), add_pooling_layer=False).eval()
        colbert = torch.nn.Linear(HIDDEN, HIDDEN)
        sparse = torch.nn.Linear(HIDDEN, 1)
    with torch.no_grad():
        sparse.bias.fill_(0.6)  # most tokens get a positive weight, as with the released head
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    torch.save(colbert.state_dict(), os.path.join(path, "colbert_linear.pt"))
    torch.save(sparse.state_dict(), os.path.join(path, "sparse_linear.pt"))
    return path


def build_cross_encoder(path: str, texts: list[str], seed: int = 1, init: float = INIT,
                        vocab_size: int = 2000) -> str:
    """Write a tiny random cross-encoder in bge-reranker-v2-m3's layout into `path`.

    Example:
        >>> build_cross_encoder("/tmp/ce", ["some text"])
        '/tmp/ce'
    """
    from transformers import XLMRobertaForSequenceClassification

    tokenizer = xlmr_tokenizer(texts, vocab_size)
    with _seeded(seed):
        model = XLMRobertaForSequenceClassification(_config(len(tokenizer), init, num_labels=1)).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
