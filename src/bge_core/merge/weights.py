"""LM-Cocktail's weighted sum of parameters, streamed tensor by tensor from safetensors.

`mix_models` writes ``Σ w_i · θ_i`` for every floating-point tensor of N checkpoints of one
architecture. Tensors are read one at a time (``safe_open(...).get_tensor``) and summed into a
single output tensor, so peak memory is about one model (the output shard being built) plus one
tensor, whatever N is; LM_Cocktail 0.0.4 holds all N state dicts in memory at once.

What is merged and what is copied:
- every floating-point tensor of ``model.safetensors`` (or of every shard listed in
  ``model.safetensors.index.json``): weighted sum, accumulated in float32, stored in the input dtype;
- BGE-M3's ``colbert_linear.pt`` / ``sparse_linear.pt``: the same weighted sum (read with
  ``torch.load(weights_only=True)``);
- integer and bool tensors (position ids, token type ids): copied from the first model, never
  averaged; when they differ between models a warning names the tensor;
- config, tokenizer and every other non-weight file: copied from the first model. Weight files of
  other formats (ONNX, ``.bin``, ``.pt``, ``.h5``…) are not copied: they would hold the first
  model's unmerged weights (`MergeResult.skipped_files` lists them);
- encoders without a sentence-transformers config get one (CLS pooling + normalize, as LM_Cocktail
  writes), so that sentence-transformers loads the merged BGE model with BGE's pooling.

Everything is checked before anything is written: at least two models, one weight per model, finite
weights summing to 1 (``|Σw − 1| ≤ 1e-6``), the same ``model_type``/``architectures`` in config.json,
the same tensor names, shapes and dtypes (the error names the first differing tensor), the same
head files. The result is written into a temporary directory beside the output and renamed into
place at the end, so a failed merge leaves nothing at the output path.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bge_core.errors import BgeCoreError, ModelLoadError
from bge_core.loading import resolve_path

ModelType = Literal["encoder", "reranker", "decoder"]
MODEL_TYPES: tuple[str, ...] = ("encoder", "reranker", "decoder")
#: BGE-M3's extra heads, merged with the same weights as the backbone.
HEAD_FILES = ("colbert_linear.pt", "sparse_linear.pt")
#: Written beside the merged model: the models, weights and how they were chosen.
RECORD_FILE = "merge_weights.json"
#: How far the weights may sum from 1 (float32 softmax output passes; a typo like 0.3,0.6 does not).
WEIGHT_SUM_TOLERANCE = 1e-6
# Files that hold weights in some other format: never copied (they would be the first model's, unmerged).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".ot", ".onnx",
                    ".onnx_data", ".gguf", ".pkl", ".npz")
_SKIPPED_DIRS = ("onnx", "openvino")


class MergeError(BgeCoreError, ValueError):
    """The models cannot be merged as asked (weights, architectures, tensors, output path);
    the message names the offending model, tensor, weight or path.

    Example:
        >>> raise MergeError("weights sum to 0.9, not 1")
    """


@dataclass(frozen=True)
class MergeResult:
    """What a merge wrote.

    Attributes:
        output_path: the merged model's directory.
        models: the input models, as given.
        weights: one weight per model (they sum to 1).
        method: ``"weights"`` (given by hand) or ``"data"`` (softmax of −loss/temperature).
        model_type: ``"encoder"``, ``"reranker"`` or ``"decoder"``.
        losses: each model's mean loss on the examples (``"data"`` only).
        temperature: the softmax temperature (``"data"`` only).
        skipped_files: files of the first model that were not copied (weights of other formats).
    """

    output_path: str
    models: list[str]
    weights: list[float]
    method: Literal["weights", "data"]
    model_type: str
    losses: list[float] | None = None
    temperature: float | None = None
    skipped_files: list[str] = field(default_factory=list)


@dataclass
class Checkpoint:
    """A model directory read far enough to plan a merge: config, tensor names → shard, headers."""

    name: str
    path: str
    config: dict[str, Any]
    shard_of: dict[str, str]  # tensor name → shard file name
    shards: list[str]  # shard file names, in the order they are written
    index_file: str | None  # "model.safetensors.index.json" for sharded checkpoints
    specs: dict[str, tuple[str, tuple[int, ...]]]  # tensor name → (safetensors dtype, shape)
    heads: dict[str, dict[str, torch.Tensor]]  # head file name → its state dict

    def file(self, tensor: str) -> str:
        return os.path.join(self.path, self.shard_of[tensor])


def check_weights(weights: Sequence[float], count: int) -> list[float]:
    """Validate mixing weights: one per model, at least two models, finite, summing to 1.

    Raises:
        MergeError: naming the offending weight or the sum.

    Example:
        >>> check_weights([0.3, 0.7], 2)
        [0.3, 0.7]
    """
    if count < 2:
        raise MergeError(f"merging needs at least two models, got {count}")
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError) as error:
        raise MergeError(f"weights must be numbers ({error})") from None
    if len(values) != count:
        raise MergeError(f"{len(values)} weights for {count} models; give one weight per model")
    for position, value in enumerate(values, start=1):
        if not math.isfinite(value):
            raise MergeError(f"weight {position} is {value}; weights must be finite")
    total = math.fsum(values)
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise MergeError(f"weights sum to {total:.9g}, not 1 (|sum - 1| must be ≤ {WEIGHT_SUM_TOLERANCE:g})")
    return values


def detect_model_type(config: dict[str, Any]) -> ModelType:
    """``"decoder"`` for ``*ForCausalLM``, ``"reranker"`` for ``*ForSequenceClassification``, else ``"encoder"``.

    Example:
        >>> detect_model_type({"architectures": ["XLMRobertaForSequenceClassification"]})
        'reranker'
    """
    archs = " ".join(config.get("architectures") or [])
    if "ForCausalLM" in archs:
        return "decoder"
    if "ForSequenceClassification" in archs:
        return "reranker"
    return "encoder"


def read_checkpoint(name: str) -> Checkpoint:
    """Resolve `name` (a directory or hub id) and read its config, safetensors headers and M3 heads.

    Raises:
        ModelLoadError: the directory, config or weights are missing or unreadable.

    Example:
        >>> read_checkpoint("./bge-small-ft").shards
        ['model.safetensors']
    """
    path = resolve_path(name)
    config_file = os.path.join(path, "config.json")
    try:
        with open(config_file, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{config_file}: cannot read the model config ({error})") from error
    index_file, shard_of = None, {}
    index_name = "model.safetensors.index.json"
    if os.path.exists(os.path.join(path, index_name)):
        index_file = index_name
        try:
            with open(os.path.join(path, index_name), encoding="utf-8") as fh:
                shard_of = dict(json.load(fh)["weight_map"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ModelLoadError(f"{os.path.join(path, index_name)}: not a safetensors index ({error})") from error
        shards = list(dict.fromkeys(sorted(shard_of.values())))
    elif os.path.exists(os.path.join(path, "model.safetensors")):
        shards = ["model.safetensors"]
    else:
        others = [f for f in sorted(os.listdir(path)) if f.endswith(".bin")]
        hint = f" (found {', '.join(others)}; save it with safe_serialization=True)" if others else ""
        raise ModelLoadError(f"{path}: no model.safetensors or model.safetensors.index.json{hint}")
    specs: dict[str, tuple[str, tuple[int, ...]]] = {}
    for shard in shards:
        file = os.path.join(path, shard)
        try:
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():
                    part = handle.get_slice(key)
                    specs[key] = (part.get_dtype(), tuple(part.get_shape()))
                    if index_file is None:
                        shard_of[key] = shard
                    elif shard_of.get(key) != shard:
                        raise ModelLoadError(f"{file}: holds {key}, which the index puts in {shard_of.get(key)}")
        except ModelLoadError:
            raise
        except Exception as error:  # noqa: BLE001 - a missing or damaged shard is reported by name
            raise ModelLoadError(f"{file}: damaged or unreadable ({type(error).__name__}: {error})") from error
    missing = sorted(set(shard_of) - set(specs))
    if missing:
        raise ModelLoadError(f"{path}: {missing[0]} is in the index but in none of its shards")
    heads = {head: _read_head(os.path.join(path, head)) for head in HEAD_FILES
             if os.path.exists(os.path.join(path, head))}
    return Checkpoint(name=str(name), path=path, config=config, shard_of=shard_of, shards=shards,
                      index_file=index_file, specs=specs, heads=heads)


def _read_head(file: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any load failure is reported with the file name
        raise ModelLoadError(f"{file}: cannot read head weights ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{file}: expected a state dict of tensors, found {type(state).__name__}")
    return state


def check_compatible(checkpoints: Sequence[Checkpoint]) -> None:
    """Every checkpoint must have the first one's architecture, tensor names, shapes, dtypes and heads.

    Raises:
        MergeError: naming the first difference (the config field, or the tensor and both models).

    Example:
        >>> check_compatible([read_checkpoint("./base"), read_checkpoint("./fine-tuned")])
    """
    first = checkpoints[0]
    for other in checkpoints[1:]:
        for key in ("model_type", "architectures"):
            if first.config.get(key) != other.config.get(key):
                raise MergeError(
                    f"different architectures: {first.name} has {key} {first.config.get(key)!r}, "
                    f"{other.name} has {other.config.get(key)!r}"
                )
        only_first = sorted(set(first.specs) - set(other.specs))
        only_other = sorted(set(other.specs) - set(first.specs))
        if only_first or only_other:
            tensor, holder, lacker = ((only_first[0], first, other) if not only_other or
                                      (only_first and only_first[0] < only_other[0])
                                      else (only_other[0], other, first))
            raise MergeError(f"tensor {tensor} is in {holder.name} but not in {lacker.name}")
        for tensor in sorted(first.specs):
            (dtype_a, shape_a), (dtype_b, shape_b) = first.specs[tensor], other.specs[tensor]
            if shape_a != shape_b:
                raise MergeError(f"tensor {tensor}: shape {list(shape_a)} in {first.name}, "
                                 f"{list(shape_b)} in {other.name}")
            if dtype_a != dtype_b:
                raise MergeError(f"tensor {tensor}: dtype {dtype_a} in {first.name}, {dtype_b} in {other.name}")
        for head in HEAD_FILES:
            if (head in first.heads) != (head in other.heads):
                holder, lacker = (first, other) if head in first.heads else (other, first)
                raise MergeError(f"{head} is in {holder.name} but not in {lacker.name}")
            if head not in first.heads:
                continue
            state_a, state_b = first.heads[head], other.heads[head]
            for key in sorted(set(state_a) | set(state_b)):
                if key not in state_a or key not in state_b:
                    raise MergeError(f"{head}: tensor {key} is in only one of {first.name} and {other.name}")
                a, b = state_a[key], state_b[key]
                if a.shape != b.shape or a.dtype != b.dtype:
                    raise MergeError(f"{head}: tensor {key} is {a.dtype} {list(a.shape)} in {first.name}, "
                                     f"{b.dtype} {list(b.shape)} in {other.name}")


def check_output(output_path: str | os.PathLike[str], overwrite: bool) -> str:
    """The output directory must not exist, be empty, or `overwrite` must be set.

    Example:
        >>> check_output("./merged", overwrite=False)
        './merged'
    """
    out = os.fspath(output_path)
    if not out:
        raise MergeError("no output directory given")
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise MergeError(f"{out}: exists and is not a directory")
        if os.listdir(out) and not overwrite:
            raise MergeError(f"{out}: exists and is not empty; pass overwrite=True (bge merge --overwrite) "
                             "to replace it")
    return out


class _TensorReader:
    """Reads single tensors of one checkpoint. Where safetensors can read with pread (0.7+), shards stay
    open and nothing is memory-mapped; otherwise each read opens and closes its shard, so that at most
    one tensor's pages of a mapped file are resident at a time."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self._handles: dict[str, Any] = {}

    def get(self, tensor: str) -> torch.Tensor:
        file = self.checkpoint.file(tensor)
        if _PREAD[0]:
            handle = self._handles.get(file)
            if handle is None:
                try:
                    handle = safe_open(file, framework="pt", backend="pread")
                except TypeError:  # an older safetensors without the pread backend
                    _PREAD[0] = False
                    return self.get(tensor)
                self._handles[file] = handle
            return handle.get_tensor(tensor)
        with safe_open(file, framework="pt") as handle:
            return handle.get_tensor(tensor).clone()  # own the bytes: the file is unmapped on exit

    def close(self) -> None:
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles.clear()


_PREAD = [True]  # flipped once if this safetensors has no pread backend


def _weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ w_i·t_i accumulated in float32 (float64 for float64 tensors), returned in the inputs' dtype."""
    dtype = tensors[0].dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    total = tensors[0].to(work) * weights[0]
    for tensor, weight in zip(tensors[1:], weights[1:]):
        total.add_(tensor.to(work), alpha=weight)
    return total.to(dtype)


def _merge_tensor(name: str, readers: Sequence[_TensorReader], weights: Sequence[float]) -> torch.Tensor:
    first = readers[0].get(name)
    if not first.is_floating_point():
        # Integer/bool buffers (position ids, token types) are indices, not parameters: copied.
        for reader in readers[1:]:
            if not torch.equal(first, reader.get(name)):
                warnings.warn(f"{name}: integer tensor differs between {readers[0].checkpoint.name} and "
                              f"{reader.checkpoint.name}; the first model's is kept", stacklevel=3)
        return first
    dtype = first.dtype
    total = first.to(torch.float64 if dtype == torch.float64 else torch.float32) * weights[0]
    del first
    for weight, reader in zip(weights[1:], readers[1:]):
        total.add_(reader.get(name).to(total.dtype), alpha=weight)  # one input tensor alive at a time
    return total.to(dtype)


def _copy_files(source: str, target: str, merged: set[str]) -> list[str]:
    """Copy the first model's non-weight files; return the weight files left out."""
    skipped: list[str] = []

    def ignore(directory: str, names: list[str]) -> set[str]:
        left_out = set()
        for name in names:
            full = os.path.join(directory, name)
            relative = os.path.relpath(full, source)
            if name.startswith(".") or relative in merged or relative == RECORD_FILE:
                left_out.add(name)
            elif os.path.isdir(full) and directory == source and name in _SKIPPED_DIRS:
                left_out.add(name)
                skipped.append(relative + "/")
            elif not os.path.isdir(full) and name.endswith(_WEIGHT_SUFFIXES):
                left_out.add(name)
                skipped.append(relative)
        return left_out

    shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
    return skipped


def _write_sentence_transformers_config(target: str, config: dict[str, Any]) -> None:
    """CLS pooling + normalize, in the classic sentence-transformers layout BAAI's checkpoints use."""
    if os.path.exists(os.path.join(target, "modules.json")):
        return
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    pooling = {
        "word_embedding_dimension": int(config.get("hidden_size", 0)), "pooling_mode_cls_token": True,
        "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False, "include_prompt": True,
    }
    _write_json(os.path.join(target, "modules.json"), modules)
    os.makedirs(os.path.join(target, "1_Pooling"), exist_ok=True)
    _write_json(os.path.join(target, "1_Pooling", "config.json"), pooling)
    os.makedirs(os.path.join(target, "2_Normalize"), exist_ok=True)
    if not os.path.exists(os.path.join(target, "sentence_bert_config.json")):
        _write_json(os.path.join(target, "sentence_bert_config.json"), {"do_lower_case": False})


def _write_json(file: str, value: Any) -> None:
    with open(file, "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def write_merged(
    checkpoints: Sequence[Checkpoint],
    weights: Sequence[float],
    output_path: str,
    *,
    model_type: str,
    overwrite: bool,
    record: dict[str, Any],
) -> list[str]:
    """Write the weighted sum of `checkpoints` into `output_path` (checked inputs; see `mix_models`).

    Builds everything in a temporary directory beside `output_path` and renames it into place last.
    Returns the first model's files that were not copied.
    """
    out = os.path.abspath(output_path)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".merging", dir=parent)
    readers = [_TensorReader(c) for c in checkpoints]
    first = checkpoints[0]
    try:
        for shard in first.shards:
            tensors = sorted(k for k, s in first.shard_of.items() if s == shard)
            with safe_open(os.path.join(first.path, shard), framework="pt") as handle:
                metadata = handle.metadata()
            merged = {name: _merge_tensor(name, readers, weights) for name in tensors}
            save_file(merged, os.path.join(staging, shard), metadata=metadata or {"format": "pt"})
            del merged  # one shard of output in memory at a time
        if first.index_file:
            shutil.copyfile(os.path.join(first.path, first.index_file), os.path.join(staging, first.index_file))
        for head, state in first.heads.items():
            merged_head = {key: _weighted_sum([c.heads[head][key] for c in checkpoints], weights) for key in state}
            torch.save(merged_head, os.path.join(staging, head))
        skipped = _copy_files(first.path, staging, set(first.shards) | set(first.heads) |
                              ({first.index_file} if first.index_file else set()))
        if model_type == "encoder" and not first.config.get("is_decoder"):
            _write_sentence_transformers_config(staging, first.config)
        _write_json(os.path.join(staging, RECORD_FILE), {**record, "skipped_files": skipped})
        _move_into_place(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        for reader in readers:
            reader.close()
    return skipped


def _move_into_place(staging: str, out: str, overwrite: bool) -> None:
    if os.path.exists(out):
        check_output(out, overwrite)  # nothing appeared there meanwhile
        retired = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".old", dir=os.path.dirname(out))
        os.rmdir(retired)
        os.rename(out, retired)
        os.rename(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, out)


def mix_models(
    models: Sequence[str],
    weights: Sequence[float],
    output_path: str | os.PathLike[str],
    model_type: ModelType | None = None,
    *,
    overwrite: bool = False,
) -> MergeResult:
    """Merge checkpoints of one architecture into ``Σ w_i · θ_i`` (LM-Cocktail with given weights).

    Args:
        models: two or more model directories (or hub ids), all of the same architecture and size.
        weights: one finite weight per model; they must sum to 1 (within 1e-6).
        output_path: directory to write; it must not exist or be empty unless `overwrite`.
        model_type: ``"encoder"`` (BGE dense, BGE-M3), ``"reranker"`` or ``"decoder"``; None reads it
            from config.json (`detect_model_type`). Only encoders get a sentence-transformers config.
        overwrite: replace a non-empty `output_path`.

    Returns:
        MergeResult; the weights are also saved as ``merge_weights.json`` in the output directory.

    Raises:
        MergeError: bad weights, different architectures/tensors/heads, or an occupied output path.
        ModelLoadError: a model directory, config or weight file is missing or unreadable.

    Example:
        >>> from bge_core.merge import mix_models
        >>> mix_models(["BAAI/bge-base-en-v1.5", "./bge-base-finetuned"], [0.5, 0.5], "./cocktail").weights
        [0.5, 0.5]
    """
    names = [os.fspath(m) for m in models]
    values = check_weights(weights, len(names))
    out = check_output(output_path, overwrite)
    checkpoints = [read_checkpoint(name) for name in names]
    check_compatible(checkpoints)
    kind = resolve_model_type(model_type, checkpoints[0])
    record = {"method": "weights", "model_type": kind, "models": names, "weights": values}
    skipped = write_merged(checkpoints, values, out, model_type=kind, overwrite=overwrite, record=record)
    return MergeResult(output_path=out, models=names, weights=values, method="weights", model_type=kind,
                       skipped_files=skipped)


def resolve_model_type(model_type: str | None, first: Checkpoint) -> str:
    """`model_type` checked, or read from the first checkpoint's config when None.

    Example:
        >>> resolve_model_type(None, read_checkpoint("./bge-reranker-ft"))
        'reranker'
    """
    if model_type is None:
        return detect_model_type(first.config)
    if model_type not in MODEL_TYPES:
        raise MergeError(f"unknown model_type {model_type!r}; expected one of {', '.join(MODEL_TYPES)}")
    return model_type
