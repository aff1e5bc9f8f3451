"""BERT / XLM-R weights for the fused packed encoder, loaded without transformers' model classes.

On the packed CUDA path the engine runs its own forward (`FusedEncoder`, models/encoder.py): of a
transformers `BertModel` it reads only the config, the embeddings and the layers' weights (of a
cross-encoder's `...ForSequenceClassification`, also its pooler and classification head). Building those
models costs importing transformers' modelling stack (torch.distributed, torch._dynamo, sympy, scipy…):
~1.8 s on the 2-core development machine, 2.7 s on an H200 host (transformers 5.17), paid by every
one-shot command (`bge eval`, `bge encode`) and every server start. `PackedBertBackbone` and
`PackedSequenceClassifier` hold the same tensors under the same names, so the checkpoint's state dict loads
into them unchanged and `FusedEncoder` reads them like the transformers models; the embeddings and heads
compute what transformers' do, in the same order. They have no padded forward: they are loaded only where
the engine runs packed batches with the fused encoder.

Example:
    >>> backbone = load_packed_backbone(path, torch.device("cuda"), torch.bfloat16)  # doctest: +SKIP
    >>> FusedEncoder(backbone)(packed_batch).shape                                  # doctest: +SKIP
    torch.Size([T, 1024])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any

import torch
from torch import nn

from bge_core.models.checkpoint import load_state_dict, read_config

#: transformers' base-model prefixes: a checkpoint saved from a model with a head stores the backbone under one.
_PREFIXES = ("bert.", "roberta.")


class _FilledFromCheckpoint:
    """Layers built on the meta device and filled with the checkpoint's tensors: no random initialisation
    (which on meta tensors runs PyTorch's Python reference kernels, and they import torch._dynamo)."""

    def reset_parameters(self) -> None:
        pass


class _Linear(_FilledFromCheckpoint, nn.Linear):
    pass


class _Embedding(_FilledFromCheckpoint, nn.Embedding):
    pass


class _LayerNorm(_FilledFromCheckpoint, nn.LayerNorm):
    pass


class _WeightsOnly:
    """A module that holds weights for the fused packed encoder and is never called itself."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{type(self).__name__} holds weights for the fused packed encoder; it has no forward "
                        "of its own")


def _module(**children: nn.Module) -> nn.Module:
    """A container whose children carry transformers' attribute names (so state-dict keys match)."""
    module = nn.Module()
    for name, child in children.items():
        module.add_module(name, child)
    return module


class PackedEmbeddings(nn.Module):
    """Word + token type 0 + absolute position embeddings, then LayerNorm (transformers' order of sums).

    Example:
        >>> emb = PackedEmbeddings(config)                                # doctest: +SKIP
        >>> emb(input_ids=ids[None], position_ids=positions[None]).shape  # doctest: +SKIP
        torch.Size([1, T, 384])
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.word_embeddings = _Embedding(config.vocab_size, hidden)
        self.position_embeddings = _Embedding(config.max_position_embeddings, hidden)
        self.token_type_embeddings = _Embedding(config.type_vocab_size, hidden)
        self.LayerNorm = _LayerNorm(hidden, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        x = x + self.position_embeddings(position_ids)
        return self.LayerNorm(x)


class PackedPooler(nn.Module):
    """BERT's pooler: tanh(dense(first token)), on [n, T, d] states (as transformers' takes them)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = _Linear(hidden, hidden)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))


class PackedClassificationHead(nn.Module):
    """RoBERTa / XLM-R's classification head: out_proj(tanh(dense(first token))) (dropout is off in eval)."""

    def __init__(self, hidden: int, labels: int) -> None:
        super().__init__()
        self.dense = _Linear(hidden, hidden)
        self.out_proj = _Linear(hidden, labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(features[:, 0])))


class PackedBertBackbone(_WeightsOnly, nn.Module):
    """The parameters of a BERT / XLM-R / RoBERTa encoder under transformers' names, for `FusedEncoder`.

    Attributes:
        config: the checkpoint's `EncoderConfig`.
        embeddings: `PackedEmbeddings`.
        encoder.layer[i]: ``attention.self.{query,key,value}``, ``attention.output.{dense,LayerNorm}``,
            ``intermediate.dense``, ``output.{dense,LayerNorm}``.
    """

    def __init__(self, config: Any, pooler: bool = False) -> None:
        super().__init__()
        self.config = config
        hidden, inner, eps = config.hidden_size, config.intermediate_size, config.layer_norm_eps
        self.embeddings = PackedEmbeddings(config)
        layers = [
            _module(
                attention=_module(
                    self=_module(query=_Linear(hidden, hidden), key=_Linear(hidden, hidden),
                                 value=_Linear(hidden, hidden)),
                    output=_module(dense=_Linear(hidden, hidden), LayerNorm=_LayerNorm(hidden, eps=eps)),
                ),
                intermediate=_module(dense=_Linear(hidden, inner)),
                output=_module(dense=_Linear(inner, hidden), LayerNorm=_LayerNorm(hidden, eps=eps)),
            )
            for _ in range(config.num_hidden_layers)
        ]
        self.encoder = _module(layer=nn.ModuleList(layers))
        if pooler:
            self.pooler = PackedPooler(hidden)


class PackedSequenceClassifier(_WeightsOnly, nn.Module):
    """The weights of a `BertForSequenceClassification` / `XLMRobertaForSequenceClassification` (cross-encoder
    rerankers) under the checkpoint's own names: the encoder (`base_model`, stored as ``bert.`` or ``roberta.``;
    BERT's with its pooler) and the classification head (`classifier`), for `FusedEncoder` and the
    cross-encoder family's packed heads.
    """

    def __init__(self, config: Any, labels: int) -> None:
        super().__init__()
        self.config = config
        roberta_style = _roberta_style(config)
        self.base_model_prefix = "roberta" if roberta_style else "bert"
        self.add_module(self.base_model_prefix, PackedBertBackbone(config, pooler=not roberta_style))
        hidden = config.hidden_size
        self.classifier = PackedClassificationHead(hidden, labels) if roberta_style else _Linear(hidden, labels)

    @property
    def base_model(self) -> PackedBertBackbone:
        return getattr(self, self.base_model_prefix)


@dataclass
class EncoderConfig:
    """The config.json fields a BERT / XLM-R / RoBERTa encoder is built from, read without transformers'
    config classes (in transformers 5.17 defining `BertConfig` imports the auto-model factory, and with it
    the model stack this module avoids).

    Example:
        >>> EncoderConfig.read("./bge-small-en-v1.5").hidden_size  # doctest: +SKIP
        384
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int
    position_embedding_type: str = "absolute"
    is_decoder: bool = False
    add_cross_attention: bool = False

    @classmethod
    def read(cls, path: str) -> EncoderConfig | None:
        """The checkpoint's config, or None when config.json leaves a field to a transformers default
        (the caller then reads it with transformers, which knows each model type's defaults)."""
        raw = read_config(path)
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING]
        if any(raw.get(name) is None for name in required):
            return None
        return cls(**{name: raw[name] for name in names if raw.get(name) is not None})


#: Model types whose encoder `FusedEncoder` runs.
ENCODER_TYPES = ("bert", "xlm-roberta", "roberta")


def fits_packed_backbone(config: Any) -> bool:
    """Whether `config` describes an encoder `FusedEncoder` computes exactly: BERT / XLM-R / RoBERTa,
    absolute positions, exact GELU, no decoder (the check `fused_encoder` makes of a loaded model too).

    Example:
        >>> from dataclasses import replace
        >>> config = EncoderConfig("bert", 100, 32, 2, 2, 64, "gelu", 512, 2, 1e-12, 0)
        >>> fits_packed_backbone(config), fits_packed_backbone(replace(config, hidden_act="relu"))
        (True, False)
    """
    return (
        getattr(config, "model_type", None) in ENCODER_TYPES
        and getattr(config, "position_embedding_type", None) in (None, "absolute")
        and getattr(config, "hidden_act", None) == "gelu"
        and not getattr(config, "is_decoder", False)
    )


def runs_fused(packed: bool, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the engine will run a BERT / XLM-R model's packed batches with the fused encoder: packed, on
    CUDA, in half precision (the only case the weights-only modules here serve).

    Example:
        >>> runs_fused(True, torch.device("cuda"), torch.bfloat16), runs_fused(True, torch.device("cpu"), torch.float32)
        (True, False)
    """
    return packed and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def _roberta_style(config: Any) -> bool:
    return config.model_type in ("xlm-roberta", "roberta")


def _filled(model: nn.Module, state: dict[str, torch.Tensor], prefix: str, device: torch.device,
            dtype: torch.dtype) -> Any:
    """`model` (built on the meta device) holding ``state[prefix + name]`` for each of its tensors, on `device`
    in `dtype`; None when one is missing or shaped otherwise."""
    expected = model.state_dict()
    if any(prefix + key not in state or state[prefix + key].shape != value.shape for key, value in expected.items()):
        return None
    model.load_state_dict({key: state[prefix + key] for key in expected}, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def _load_plain(path: str, device: torch.device, dtype: torch.dtype,
                build: Callable[[EncoderConfig, dict[str, torch.Tensor]], tuple[nn.Module, str] | None]) -> Any:
    """The module `build` makes (on the meta device) for a plain encoder checkpoint, filled with the tensors
    stored under the prefix it names, on `device` in `dtype`; None where the checkpoint is no plain encoder
    (or has cross-attention layers, which these modules do not hold), its config leaves fields to
    transformers' defaults, `build` finds no layout it knows, or a tensor is missing or shaped otherwise."""
    config = EncoderConfig.read(path)
    if config is None or not fits_packed_backbone(config) or config.add_cross_attention:
        return None
    state = load_state_dict(path, device)
    with torch.device("meta"):
        built = build(config, state)
    return None if built is None else _filled(built[0], state, built[1], device, dtype)


def load_packed_backbone(path: str, device: torch.device, dtype: torch.dtype) -> PackedBertBackbone | None:
    """The checkpoint's encoder weights in a `PackedBertBackbone` on `device` in `dtype`, or None when the
    checkpoint is not a plain encoder (`fits_packed_backbone`, no cross-attention), its config.json leaves fields to
    transformers' defaults, or it does not hold exactly the expected tensors (older names such as LayerNorm
    ``gamma``, another layout): the caller then loads the transformers model, which knows every layout.

    Weights outside the encoder (a pooler, an MLM or classification head) are left out, as transformers'
    `AutoModel` leaves them out.

    Example:
        >>> load_packed_backbone("./bge-small-en-v1.5", torch.device("cuda"), torch.float16)  # doctest: +SKIP
        PackedBertBackbone(...)
    """
    def build(config: EncoderConfig, state: dict[str, torch.Tensor]) -> tuple[nn.Module, str] | None:
        prefix = next((p for p in ("", *_PREFIXES) if f"{p}embeddings.word_embeddings.weight" in state), None)
        return None if prefix is None else (PackedBertBackbone(config), prefix)

    return _load_plain(path, device, dtype, build)


def load_packed_classifier(path: str, device: torch.device, dtype: torch.dtype) -> PackedSequenceClassifier | None:
    """A cross-encoder checkpoint (`...ForSequenceClassification` of a plain BERT / XLM-R) in a
    `PackedSequenceClassifier` on `device` in `dtype`, or None where `load_packed_backbone` would give None
    (the caller then loads transformers' `AutoModelForSequenceClassification`).

    Example:
        >>> load_packed_classifier("./bge-reranker-v2-m3", torch.device("cuda"), torch.float16)  # doctest: +SKIP
        PackedSequenceClassifier(...)
    """
    def build(config: EncoderConfig, state: dict[str, torch.Tensor]) -> tuple[nn.Module, str] | None:
        head = state.get("classifier.out_proj.weight" if _roberta_style(config) else "classifier.weight")
        if head is None or head.ndim != 2:
            return None
        return PackedSequenceClassifier(config, int(head.shape[0])), ""  # the checkpoint's own names

    return _load_plain(path, device, dtype, build)
