"""LM-Cocktail's weights from a few examples: ``softmax(−loss_i / temperature)`` over the models.

Each model's loss on the examples is computed with the model alone in memory (loaded, scored,
released), then the weighted sum is streamed as in `mix_models`. Losses (all without gradients):

- **encoder** (BGE dense, BGE-M3; LM_Cocktail's ``embedder_loss``): examples
  ``{"query": str, "pos": [str, …], "neg": [str, …]}``. Per batch of `batch_size` examples, the
  queries and, per example, ``pos[0]`` followed by `neg_number` negatives drawn with
  ``random.Random(seed).sample(neg, neg_number)`` are encoded; the embedding is the L2-normalised
  CLS vector of the last hidden state; scores = q·pᵀ / 0.05 over all passages of the batch; the
  loss is the cross-entropy of each query's own positive (in-batch negatives included), averaged
  over the batch, then over batches.
- **reranker** (cross-encoders; not in LM_Cocktail, defined here as FlagEmbedding's reranker
  training loss): the same examples and sampling; each query is scored with its group
  ``[pos[0]] + negatives`` by the model's single logit (pairs tokenised together, truncated to
  `max_input_length`); the loss is the cross-entropy of the positive within its group (target
  index 0), averaged over the examples of a batch, then over batches.
- **decoder** (LM_Cocktail's ``llm_loss``): examples ``{"input": str, "output": str}``; the text
  ``input + " " + output`` plus EOS, labels masked (−100) over the first ``len(encode(input))``
  tokens, truncated to `max_input_length`; the model's mean token cross-entropy per batch,
  averaged over batches. LM_Cocktail pads every sequence to `max_input_length`; here a batch is
  padded on the right to its longest sequence with those positions masked out, which gives the
  same loss for causal models.

Sampling negatives with a seeded ``random.Random(seed)`` draws exactly what LM_Cocktail draws after
``random.seed(seed)``, so the weights are reproducible and comparable.
"""

from __future__ import annotations

import gc
import math
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from bge_core.merge.weights import (
    MergeError,
    MergeResult,
    ModelType,
    check_compatible,
    check_output,
    check_weights,
    read_checkpoint,
    resolve_model_type,
    write_merged,
)

#: LM_Cocktail's temperature of the embedder's contrastive scores.
EMBEDDER_SCORE_TEMPERATURE = 0.05


def check_example(example: Any, model_type: str, neg_number: int, where: str) -> None:
    """Validate one example for `model_type`; `where` prefixes the message (e.g. ``"data.jsonl:3"``).

    Raises:
        MergeError: the example lacks a field, has a field of the wrong type, or too few negatives.

    Example:
        >>> check_example({"input": "2+2=", "output": "4"}, "decoder", 7, "example 1")
    """
    if not isinstance(example, Mapping):
        raise MergeError(f"{where}: expected an object, got {type(example).__name__}")
    if model_type == "decoder":
        for key in ("input", "output"):
            if not isinstance(example.get(key), str):
                raise MergeError(f'{where}: "{key}" must be a string (decoder examples are {{"input", "output"}})')
        return
    if not isinstance(example.get("query"), str):
        raise MergeError(f'{where}: "query" must be a string ({model_type} examples are {{"query", "pos", "neg"}})')
    for key in ("pos", "neg"):
        value = example.get(key)
        if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
            raise MergeError(f'{where}: "{key}" must be a list of strings')
    if not example["pos"]:
        raise MergeError(f'{where}: "pos" is empty; each example needs a positive passage')
    if len(example["neg"]) < neg_number:
        raise MergeError(f'{where}: {len(example["neg"])} negatives in "neg", fewer than neg_number={neg_number}')


def weights_from_losses(losses: Sequence[float], temperature: float) -> list[float]:
    """``softmax(−loss / temperature)``: lower loss, higher weight; a lower temperature sharpens them.

    Example:
        >>> weights_from_losses([1.0, 1.0], 5.0)
        [0.5, 0.5]
    """
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise MergeError(f"temperature must be a finite number > 0, got {temperature!r}")
    scaled = -torch.tensor([float(x) for x in losses], dtype=torch.float64) / float(temperature)
    return torch.softmax(scaled, dim=-1).tolist()


def _sample_groups(examples: Sequence[Mapping[str, Any]], neg_number: int, seed: int | None
                   ) -> list[tuple[str, list[str]]]:
    """(query, [positive, negatives…]) per example, negatives drawn as LM_Cocktail draws them."""
    rng = random.Random(seed)
    return [(e["query"], [e["pos"][0], *rng.sample(e["neg"], neg_number)]) for e in examples]


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _position_limit(model: Any, requested: int) -> int:
    """`requested`, capped where the model has no positions left (RoBERTa reserves pad_token_id + 1)."""
    config = model.config
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return requested
    if getattr(config, "model_type", "") in ("xlm-roberta", "roberta", "camembert"):
        positions -= int(getattr(config, "pad_token_id", 1) or 1) + 1
    return min(requested, positions)


def _encoder_loss(model: Any, tokenizer: Any, groups: list[tuple[str, list[str]]], batch_size: int,
                  max_length: int, device: torch.device) -> float:
    def embed(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        hidden = model(**tokens.to(device), return_dict=True).last_hidden_state[:, 0]
        return torch.nn.functional.normalize(hidden.float(), dim=-1)

    losses = []
    for batch in _batches(groups, batch_size):
        queries = embed([query for query, _ in batch])
        passages = embed([text for _, group in batch for text in group])
        scores = queries @ passages.T / EMBEDDER_SCORE_TEMPERATURE
        # Each query's positive is the first passage of its own group.
        target = torch.arange(len(batch), device=scores.device) * (passages.shape[0] // queries.shape[0])
        losses.append(torch.nn.functional.cross_entropy(scores, target).item())
    return sum(losses) / len(losses)


def _reranker_loss(model: Any, tokenizer: Any, groups: list[tuple[str, list[str]]], batch_size: int,
                   max_length: int, device: torch.device) -> float:
    if int(getattr(model.config, "num_labels", 1)) != 1:
        raise MergeError(f"reranker loss needs a one-logit cross-encoder; this one has "
                         f"{model.config.num_labels} labels")
    losses = []
    for batch in _batches(groups, batch_size):
        queries = [query for query, group in batch for _ in group]
        passages = [text for _, group in batch for text in group]
        tokens = tokenizer(queries, passages, padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")
        logits = model(**tokens.to(device), return_dict=True).logits[:, 0].float()
        grouped = logits.view(len(batch), -1)  # row i: query i with [positive, negatives…]
        target = torch.zeros(len(batch), dtype=torch.long, device=grouped.device)
        losses.append(torch.nn.functional.cross_entropy(grouped, target).item())
    return sum(losses) / len(losses)


def _decoder_batches(examples: Sequence[Mapping[str, Any]], tokenizer: Any, batch_size: int, max_length: int
                     ) -> list[dict[str, torch.Tensor]]:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows = []
    for example in examples:
        ids = tokenizer.encode(example["input"] + " " + example["output"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        prompt_length = len(tokenizer.encode(example["input"]))
        labels = [-100] * prompt_length + ids[prompt_length:]
        rows.append((ids[:max_length], labels[:max_length]))
    batches = []
    for batch in _batches(rows, batch_size):
        width = max(len(ids) for ids, _ in batch)
        batches.append({
            "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in batch]),
            "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in batch]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch]),
        })
    return batches


def _decoder_loss(model: Any, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    losses = [model(**{k: v.to(device) for k, v in batch.items()}).loss.item() for batch in batches]
    return sum(losses) / len(losses)


def _load(path: str, model_type: str, device: torch.device) -> Any:
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = {"encoder": AutoModel, "reranker": AutoModelForSequenceClassification,
           "decoder": AutoModelForCausalLM}[model_type]
    # float32: the losses decide the weights, so they are computed at full precision.
    return cls.from_pretrained(path, dtype=torch.float32, trust_remote_code=False).to(device).eval()


def compute_losses(
    paths: Sequence[str],
    example_data: Sequence[Mapping[str, Any]],
    model_type: str,
    *,
    batch_size: int = 2,
    max_input_length: int = 2048,
    neg_number: int = 7,
    seed: int | None = 0,
    device: str | torch.device | None = None,
) -> list[float]:
    """Each model's mean loss on the examples (see the module docstring), one model in memory at a time.

    The tokenizer is the first model's, and the negatives are sampled once, so every model sees
    the same batches.

    Example:
        >>> compute_losses(["./base", "./ft"], [{"input": "2+2=", "output": "4"}], "decoder")
        [3.91, 2.07]
    """
    from transformers import AutoTokenizer

    from bge_core.loading import resolve_device

    torch_device = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(paths[0], trust_remote_code=False)
    groups = _sample_groups(example_data, neg_number, seed) if model_type != "decoder" else []
    decoder_batches = (_decoder_batches(example_data, tokenizer, batch_size, max_input_length)
                       if model_type == "decoder" else [])
    losses = []
    for path in paths:
        model = _load(path, model_type, torch_device)
        with torch.inference_mode():
            if model_type == "decoder":
                loss = _decoder_loss(model, decoder_batches, torch_device)
            else:
                max_length = _position_limit(model, max_input_length)
                loss_fn = _encoder_loss if model_type == "encoder" else _reranker_loss
                loss = loss_fn(model, tokenizer, groups, batch_size, max_length, torch_device)
        del model
        gc.collect()  # release this model before the next one loads
        if not math.isfinite(loss):
            raise MergeError(f"{path}: the loss on the examples is {loss}; cannot weight this model")
        losses.append(loss)
    return losses


def mix_models_with_data(
    models: Sequence[str],
    example_data: Sequence[Mapping[str, Any]],
    output_path: str | os.PathLike[str],
    temperature: float = 5.0,
    model_type: ModelType | None = None,
    *,
    batch_size: int = 2,
    max_input_length: int = 2048,
    neg_number: int = 7,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    overwrite: bool = False,
) -> MergeResult:
    """Merge models with weights ``softmax(−loss_i / temperature)`` from a few examples (LM-Cocktail).

    Args:
        models: two or more model directories (or hub ids) of one architecture.
        example_data: a few examples (LM-Cocktail suggests about 5): ``{"query", "pos", "neg"}`` for
            encoders and rerankers, ``{"input", "output"}`` for decoders.
        output_path: directory to write; it must not exist or be empty unless `overwrite`.
        temperature: softmax temperature (> 0); lower gives sharper weights.
        model_type: ``"encoder"``, ``"reranker"`` or ``"decoder"``; None reads it from config.json.
        batch_size: examples per forward batch.
        max_input_length: tokens per text (encoders and rerankers are further capped by their positions).
        neg_number: negatives sampled per example (encoder, reranker); each example needs that many.
        seed: seeds the negative sampling (``random.Random(seed)``); None draws fresh ones.
        device: where losses are computed; default the first GPU, else CPU.
        overwrite: replace a non-empty `output_path`.

    Returns:
        MergeResult with the losses and weights (also saved as ``merge_weights.json``).

    Raises:
        MergeError: bad examples, temperature, architectures or output path, or a non-finite loss.
        ModelLoadError: a model is missing or unreadable.

    Example:
        >>> from bge_core.merge import mix_models_with_data
        >>> examples = [{"query": "what is a panda?", "pos": ["a bear of China"], "neg": ["a car"] * 7}]
        >>> mix_models_with_data(["./base", "./finetuned"], examples, "./cocktail").weights
        [0.47, 0.53]
    """
    names = [os.fspath(m) for m in models]
    if len(names) < 2:
        raise MergeError(f"merging needs at least two models, got {len(names)}")
    weights_from_losses([0.0], temperature)  # a bad temperature fails before any work
    for option, value in (("batch_size", batch_size), ("max_input_length", max_input_length)):
        if not isinstance(value, int) or value < 1:
            raise MergeError(f"{option} must be a positive integer, got {value!r}")
    if not isinstance(neg_number, int) or neg_number < 0:
        raise MergeError(f"neg_number must be an integer ≥ 0, got {neg_number!r}")
    out = check_output(output_path, overwrite)
    checkpoints = [read_checkpoint(name) for name in names]
    check_compatible(checkpoints)
    kind = resolve_model_type(model_type, checkpoints[0])
    examples = list(example_data)
    if not examples:
        raise MergeError("no examples; data-driven weights need at least one")
    for number, example in enumerate(examples, start=1):
        check_example(example, kind, neg_number, f"example {number}")
    losses = compute_losses([c.path for c in checkpoints], examples, kind, batch_size=batch_size,
                            max_input_length=max_input_length, neg_number=neg_number, seed=seed, device=device)
    weights = check_weights(weights_from_losses(losses, temperature), len(names))
    record = {"method": "data", "model_type": kind, "models": names, "weights": weights, "losses": losses,
              "temperature": float(temperature), "examples": len(examples), "seed": seed,
              "batch_size": batch_size, "max_input_length": max_input_length,
              "neg_number": neg_number if kind != "decoder" else None}
    skipped = write_merged(checkpoints, weights, out, model_type=kind, overwrite=overwrite, record=record)
    return MergeResult(output_path=out, models=names, weights=weights, method="data", model_type=kind,
                       losses=losses, temperature=float(temperature), skipped_files=skipped)
