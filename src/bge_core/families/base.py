"""The contract between the engine and a model family.

A family is an input format plus a head: it turns user items (texts or (query, passage)
pairs) into token ids, and turns one padded batch of token ids into per-item outputs.
Everything else — length sorting, token-budget batching, out-of-memory splitting, threads,
devices, input order — belongs to the engine and is written once.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch


@dataclass(frozen=True)
class TokenizedItem:
    """One item after its family's input formatting.

    `over_length` is True when the text had to be cut to fit `max_length`
    (the engine raises on it when the caller asked for `truncate=False`).
    `meta` carries family-specific facts the head needs (e.g. query length for token
    compression); the engine passes it through untouched.
    """

    ids: list[int]
    over_length: bool = False
    meta: Any = None


@dataclass
class Batch:
    """A padded batch on the model's device, in the order the engine chose."""

    input_ids: torch.Tensor  # [B, L] int64
    attention_mask: torch.Tensor  # [B, L] int64, 1 on real tokens
    lengths: list[int]  # real tokens per row
    padding_side: Literal["left", "right"]
    metas: list[Any] = field(default_factory=list)

    def last_positions(self) -> torch.Tensor:
        """Index of each row's last real token."""
        lengths = torch.tensor(self.lengths, device=self.input_ids.device)
        if self.padding_side == "left":
            return torch.full_like(lengths, self.input_ids.shape[1] - 1)
        return lengths - 1


class Pending:
    """A head's device outputs on their way to the host.

    The copies to pinned host memory are queued without waiting, so the engine can launch the next
    batch's forward before this one is finished; `host_outputs` waits for the copies. On CPU
    everything is ready at once. `build` turns the host arrays into per-row results and must pickle
    (a module-level function, or a `functools.partial` of one): a device worker sends the arrays
    and the calling process builds the rows, so per-row Python objects are made once, where they
    are used.

    Example:
        >>> Pending({"x": torch.ones(2, 3)}, split_rows("x")).host_outputs().rows()[0].shape
        (3,)
    """

    def __init__(self, tensors: dict[str, torch.Tensor], build: Callable[[dict[str, np.ndarray]], list[Any]]) -> None:
        self._build = build
        self._event = None
        if any(t.is_cuda for t in tensors.values()):
            # Copied on a side stream: on the compute stream the next batch's kernels would queue
            # behind the copy (ColBERT vectors are ~130 MB a batch).
            device = next(t.device for t in tensors.values() if t.is_cuda)
            compute, copy = torch.cuda.current_stream(device), _copy_stream(device)
            copy.wait_stream(compute)
            with torch.cuda.stream(copy):
                self._host = {k: t.to("cpu", non_blocking=True) for k, t in tensors.items()}
                self._event = torch.cuda.Event()
                self._event.record(copy)
            for t in tensors.values():
                if t.is_cuda:  # not reused by the caching allocator until the copy is done
                    t.record_stream(copy)
        else:
            self._host = tensors

    def host_outputs(self) -> HostOutputs:
        """The arrays once copied (waits for the copies) and the function that makes rows of them."""
        if self._event is not None:
            self._event.synchronize()
        return HostOutputs({k: v.numpy() for k, v in self._host.items()}, self._build)


@dataclass
class HostOutputs:
    """One batch's head outputs as host arrays, with the (picklable) function that turns them into
    one result per row, in the batch's order.

    Example:
        >>> HostOutputs({"scores": np.zeros((2, 1))}, split_rows("scores")).rows()[1].shape
        (1,)
    """

    arrays: dict[str, np.ndarray]
    build: Callable[[dict[str, np.ndarray]], list[Any]]

    def rows(self) -> list[Any]:
        return self.build(self.arrays)


def split_rows(key: str) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """A picklable `Pending` build: row i of ``host[key]`` is item i's result.

    Example:
        >>> split_rows("dense")({"dense": np.eye(2)})[1].tolist()
        [0.0, 1.0]
    """
    return functools.partial(_split_rows, key)


def _split_rows(key: str, host: dict[str, np.ndarray]) -> list[np.ndarray]:
    return list(host[key])


def split_tokens(key: str, lengths: list[int]) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """A picklable `Pending` build for per-token outputs of texts back to back: item i's result is its
    `lengths[i]` rows of ``host[key]`` (views).

    Example:
        >>> [a.tolist() for a in split_tokens("t", [1, 2])({"t": np.arange(3)})]
        [[0], [1, 2]]
    """
    return functools.partial(_split_tokens, key, list(lengths))


def _split_tokens(key: str, lengths: list[int], host: dict[str, np.ndarray]) -> list[np.ndarray]:
    return np.split(host[key], np.cumsum(lengths[:-1])) if lengths else []


def score_rows(scores: torch.Tensor) -> Pending:
    """Per-row float32 score arrays from a [B, k] tensor, copied to the host without blocking.

    Example:
        >>> score_rows(torch.tensor([[0.5], [2.0]])).host_outputs().rows()[1].tolist()
        [2.0]
    """
    return Pending({"scores": scores.float()}, split_rows("scores"))


_COPY_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    """One device-to-host copy stream per GPU."""
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return _COPY_STREAMS[device]


@dataclass
class PackedBatch:
    """Sequences back to back in one row, without padding (CUDA varlen attention)."""

    input_ids: torch.Tensor  # [1, T] int64
    position_ids: torch.Tensor  # [1, T] int64, restarting at every sequence
    cu_seqlens: torch.Tensor  # [n + 1] int32 (int64 as a view of a CUDA graph's inputs): start of each sequence, then T
    max_length: int
    lengths: list[int]
    seq_ids: torch.Tensor  # [T] int64: which sequence each token belongs to
    metas: list[Any] = field(default_factory=list)

    @property
    def starts(self) -> torch.Tensor:
        return self.cu_seqlens[:-1].long()

    @property
    def ends(self) -> torch.Tensor:
        return self.cu_seqlens[1:].long()

    def backbone_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that route a transformers backbone through packed attention (and keep
        decoders from building a KV cache nobody reads)."""
        return {
            "use_cache": False,
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "cu_seq_lens_q": self.cu_seqlens,
            "cu_seq_lens_k": self.cu_seqlens,
            "max_length_q": self.max_length,
            "max_length_k": self.max_length,
        }


class Family(ABC):
    """Input format + head of one model family.

    Subclasses set `padding_side` and implement `tokenize` and `forward`. `forward` must
    return one output per batch row, already moved off the device (numpy / Python values),
    so the engine can hand them back in input order.
    """

    padding_side: ClassVar[Literal["left", "right"]] = "right"
    pad_to_multiple_of: ClassVar[int | None] = None
    #: Families that implement `heads_packed` run padding-free on CUDA.
    supports_packing: ClassVar[bool] = False
    #: Set by the engine: a fused packed forward of the backbone (BERT / XLM-R on CUDA), or None.
    fused_backbone: Callable[[PackedBatch], torch.Tensor] | None = None

    def __init__(self, tokenizer: Any, model: torch.nn.Module, spec: Any) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.spec = spec

    @classmethod
    @abstractmethod
    def load(cls, path: str, spec: Any, device: torch.device, dtype: torch.dtype, packed: bool = False) -> Family:
        """Load tokenizer and weights from a local directory onto `device` in `dtype`. `packed`: the engine
        will run packed batches (a family may then load weights for the fused encoder only)."""

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)

    @abstractmethod
    def tokenize(self, items: list[Any], max_length: int, options: dict[str, Any]) -> list[TokenizedItem]:
        """Format and tokenize `items` (the tokenizer lock is held by the caller)."""

    @abstractmethod
    def forward(self, batch: Batch, options: dict[str, Any]) -> Pending:
        """Run the backbone and the head on one batch: a `Pending` of one output per row."""

    def backbone_module(self) -> torch.nn.Module:
        """The transformers backbone whose token states the heads read."""
        return self.model

    def backbone_packed(self, batch: PackedBatch) -> torch.Tensor:
        """Token states [T, d] of a packed batch (families with `supports_packing`): the fused
        encoder where the engine set one, else the transformers backbone on packed attention."""
        if self.fused_backbone is not None:
            return self.fused_backbone(batch)
        return self.backbone_module()(**batch.backbone_kwargs()).last_hidden_state[0]

    def heads_packed(self, hidden: torch.Tensor, batch: PackedBatch, options: dict[str, Any]) -> Pending:
        """The same outputs as `forward`, from the token states of a packed batch."""
        raise TypeError(f"{type(self).__name__} does not run on packed batches")

    def position_offset(self) -> int:
        """First position id of a sequence: RoBERTa-style models count from padding_idx + 1."""
        config = self.model.config
        if getattr(config, "model_type", "") in ("xlm-roberta", "roberta"):
            return int(config.pad_token_id) + 1
        return 0
