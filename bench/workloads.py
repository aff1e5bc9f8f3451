"""Benchmark workloads and random-weight checkpoints of the real BGE architectures.

The shapes are those of the published models (weights change no FLOPs); the tokenizer is
word-level so every word is exactly one token and token counts are known in advance.
Lengths follow the anchor measurements: MS MARCO-like passages and long documents. Torch is imported
only to build a checkpoint: `bench/serve.py`'s load-generator processes import this module.
"""

from __future__ import annotations

import math
import os
import random
import sys

VOCAB_WORDS = 50_000
#: Environment variables that change what a run measures; each run records those that are set.
MEASURED_ENV = ("TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "BGE_SERVE_REJOIN_WAIT", "CUDA_VISIBLE_DEVICES")


def run_environment() -> dict[str, str]:
    """The `MEASURED_ENV` variables set for this run, to store with its results; warns where one makes the run
    unlike a user's (TOKENIZERS_PARALLELISM=false tokenizes every system on one thread: on a 16-core GPU host it
    cut the cross-encoder from 6,694 to 3,104 pairs/s, BENCHMARKS.md, fifteenth session).

    Example:
        >>> os.environ["TOKENIZERS_PARALLELISM"] = "false"; run_environment()  # doctest: +SKIP
        {'TOKENIZERS_PARALLELISM': 'false'}
    """
    found = {name: os.environ[name] for name in MEASURED_ENV if name in os.environ}
    if found.get("TOKENIZERS_PARALLELISM", "").strip().lower() in ("0", "false", "no", "off"):
        print("warning: TOKENIZERS_PARALLELISM=false: tokenizers run on one thread, so every system's host work "
              "is slower than a user's; unset it for figures to report", file=sys.stderr, flush=True)
    return found


def word_tokenizer(path: str, kind: str = "xlmr") -> None:
    """A word-level tokenizer saved to `path`: XLM-R specials (<s> … </s>) or Gemma's (<bos>, 'Yes')."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "xlmr":
        vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    else:
        vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "Yes": 4, "No": 5, ":": 6, "A": 7, "B": 8}
    first = len(vocab)
    vocab.update({f"w{i}": i + first for i in range(VOCAB_WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "xlmr":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
            cls_token="<s>", sep_token="</s>", mask_token="<unk>", model_max_length=8192,
        )
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>",
            padding_side="left", model_max_length=8192,
        )
    fast.save_pretrained(path)


def _xlmr_config(**extra: object):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        max_position_embeddings=8194, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, **extra,
    )


def build_m3(path: str) -> str:
    """bge-m3 architecture (XLM-R large, 8194 positions) + ColBERT and sparse heads, fp16 on disk."""
    import torch
    from transformers import XLMRobertaModel

    if os.path.exists(os.path.join(path, "sparse_linear.pt")):
        return path
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = XLMRobertaModel(_xlmr_config(), add_pooling_layer=False).half()
    model.save_pretrained(path)
    torch.save(torch.nn.Linear(1024, 1024).half().state_dict(), os.path.join(path, "colbert_linear.pt"))
    torch.save(torch.nn.Linear(1024, 1).half().state_dict(), os.path.join(path, "sparse_linear.pt"))
    word_tokenizer(path)
    return path


def build_cross_encoder(path: str) -> str:
    """bge-reranker-v2-m3 architecture: XLM-R large with one logit."""
    import torch
    from transformers import XLMRobertaForSequenceClassification

    if os.path.exists(os.path.join(path, "config.json")):
        return path
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = XLMRobertaForSequenceClassification(_xlmr_config(num_labels=1)).half()
    model.save_pretrained(path)
    word_tokenizer(path)
    return path


def build_gemma_reranker(path: str) -> str:
    """bge-reranker-v2-gemma architecture: Gemma-2B causal LM, bf16."""
    import torch
    from transformers import GemmaConfig, GemmaForCausalLM

    if os.path.exists(os.path.join(path, "config.json")):
        return path
    torch.manual_seed(0)
    config = GemmaConfig(
        vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
        num_key_value_heads=1, head_dim=256, max_position_embeddings=8192, pad_token_id=0, eos_token_id=1,
        bos_token_id=2,
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = GemmaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    word_tokenizer(path, kind="gemma")
    return path


def build_small_dense(path: str) -> str:
    """bge-small-en-v1.5 architecture (BERT 12 x 384) for the CPU benchmark."""
    import torch
    from transformers import BertConfig, BertModel

    if os.path.exists(os.path.join(path, "config.json")):
        return path
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=VOCAB_WORDS + 4, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=1536)).save_pretrained(path)
    word_tokenizer(path)
    return path


def corpus(n: int, low: int, high: int, median: float, sigma: float, seed: int) -> list[str]:
    """`n` texts of random words with lognormal lengths (median `median` words, clipped to [low, high])."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = int(min(high, max(low, rng.lognormvariate(math.log(median), sigma))))
        out.append(" ".join(f"w{rng.randrange(VOCAB_WORDS)}" for _ in range(length)))
    return out


def passages(n: int = 20_000) -> list[str]:
    """MS MARCO-like passages: median 90 words, 8–510."""
    return corpus(n, 8, 510, 90, 0.6, 1)


def long_documents(n: int = 400) -> list[str]:
    """Long documents: median 2,500 words, 512–8,190."""
    return corpus(n, 512, 8190, 2500, 0.6, 2)


def rerank_pairs(n: int = 20_000) -> list[tuple[str, str]]:
    """(query, passage) pairs: ~10-word queries, passages as above, ten passages a query."""
    queries = corpus(n // 10, 4, 40, 10, 0.4, 3)
    docs = corpus(n, 8, 500, 90, 0.6, 4)
    return [(queries[i // 10], docs[i]) for i in range(n)]


def words(texts: list[str]) -> int:
    return sum(len(t.split()) for t in texts)
