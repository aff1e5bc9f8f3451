"""Reading a checkpoint directory (config.json + safetensors or PyTorch weights, sharded or not)
into the project's own model classes, without materialising random initial weights first."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file

from bge_core.errors import ModelLoadError

M = TypeVar("M", bound=torch.nn.Module)

#: Buffers some exports save although they are recomputed (rotary frequencies).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_config(path: str) -> dict[str, Any]:
    """The checkpoint's config.json as a dict."""
    file = os.path.join(path, "config.json")
    try:
        with open(file, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{file}: cannot read the model config ({error})") from error


def _weight_files(path: str) -> list[str]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        index = os.path.join(path, f"{name}.index.json")
        if os.path.exists(index):
            with open(index, encoding="utf-8") as fh:
                shards = sorted(set(json.load(fh)["weight_map"].values()))
            return [os.path.join(path, shard) for shard in shards]
        if os.path.exists(os.path.join(path, name)):
            return [os.path.join(path, name)]
    raise ModelLoadError(f"{path}: no model.safetensors or pytorch_model.bin (or their .index.json)")


def load_state_dict(path: str, device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in `path`, on `device` in the stored dtype."""
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(path):
        if file.endswith(".safetensors"):
            state.update(load_file(file, device=str(device)))
        else:
            state.update(torch.load(file, map_location=device, weights_only=True))
    return state


def load_model(factory: Callable[[], M], path: str, device: torch.device, dtype: torch.dtype) -> M:
    """Build `factory()` on the meta device and fill it with the checkpoint's tensors.

    Raises:
        ModelLoadError: a parameter is missing from the checkpoint, or the checkpoint has
            tensors the model does not know (a different architecture or head layout).
    """
    with torch.device("meta"):
        model = factory()
    state = {k: v for k, v in load_state_dict(path, device).items() if not k.endswith(_IGNORED_SUFFIXES)}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise ModelLoadError(
            f"{path}: weights do not match {type(model).__name__} "
            f"(missing {missing[:5]}{' …' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' …' if len(unexpected) > 5 else ''})"
        )
    model.load_state_dict(state, assign=True)
    return model.to(device=device, dtype=dtype).eval()
