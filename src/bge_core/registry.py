"""What each published BGE model is: family, pooling, instructions and lengths.

Hub ids are matched on their last path component (case-insensitive), so local copies named like
the published repositories get the same defaults. Anything not listed is classified from its files
(`detect_spec`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Literal

FamilyName = Literal[
    "dense", "m3", "llm_embedder", "icl", "cross_encoder", "llm_reranker", "layerwise_reranker", "lightweight_reranker",
    "visualized",
]
Pooling = Literal["cls", "mean", "last_token"]

EN_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
ZH_QUERY_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："

#: BAAI/llm-embedder task instructions: task -> (query instruction, key instruction).
LLM_EMBEDDER_INSTRUCTIONS: dict[str, tuple[str, str]] = {
    "qa": ("Represent this query for retrieving relevant documents: ", "Represent this document for retrieval: "),
    "convsearch": (
        "Encode this query and context for searching relevant passages: ",
        "Encode this passage for retrieval: ",
    ),
    "chat": (
        "Embed this dialogue to find useful historical dialogues: ",
        "Embed this historical dialogue for retrieval: ",
    ),
    "lrlm": (
        "Embed this text chunk for finding useful historical chunks: ",
        "Embed this historical text chunk for retrieval: ",
    ),
    "icl": (
        "Convert this example into vector to look for useful examples: ",
        "Convert this example into vector for retrieval: ",
    ),
    "tool": (
        "Transform this user request for fetching helpful tool descriptions: ",
        "Transform this tool description for retrieval: ",
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """Defaults of one model. Every field can be overridden by the caller."""

    family: FamilyName
    pooling: Pooling = "cls"
    normalize: bool = True
    query_instruction: str | None = None
    query_instruction_format: str = "{}{}"
    passage_instruction: str | None = None
    max_length: int = 512
    suffix: str = ""  # appended to ICL queries

    def with_overrides(self, **changes: object) -> ModelSpec:
        """A copy with the non-None `changes` applied."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _dense(lang: str) -> ModelSpec:
    return ModelSpec("dense", query_instruction=EN_QUERY_INSTRUCTION if lang == "en" else ZH_QUERY_INSTRUCTION)


_LLM_FORMAT = "<instruct>{}\n<query>{}"

KNOWN_MODELS: dict[str, ModelSpec] = {
    **{f"bge-{size}-{lang}{ver}": _dense(lang) for size in ("small", "base", "large") for lang in ("en", "zh")
       for ver in ("", "-v1.5")},
    "bge-m3": ModelSpec("m3", max_length=8192),
    "llm-embedder": ModelSpec("dense"),
    "bge-multilingual-gemma2": ModelSpec("llm_embedder", pooling="last_token", query_instruction_format=_LLM_FORMAT),
    "bge-code-v1": ModelSpec("llm_embedder", pooling="last_token", query_instruction_format=_LLM_FORMAT),
    "bge-en-icl": ModelSpec("icl", pooling="last_token", query_instruction_format=_LLM_FORMAT, suffix="\n<response>"),
    "bge-reranker-base": ModelSpec("cross_encoder"),
    "bge-reranker-large": ModelSpec("cross_encoder"),
    "bge-reranker-v2-m3": ModelSpec("cross_encoder"),
    "bge-reranker-v2-gemma": ModelSpec("llm_reranker"),
    "bge-reranker-v2-minicpm-layerwise": ModelSpec("layerwise_reranker"),
    "bge-reranker-v2.5-gemma2-lightweight": ModelSpec("lightweight_reranker"),
}

_CROSS_ENCODER_ARCHS = ("ForSequenceClassification",)

#: Defaults of a family when the checkpoint is not a published one.
FAMILY_DEFAULTS: dict[str, ModelSpec] = {
    "dense": ModelSpec("dense"),
    "m3": ModelSpec("m3", max_length=8192),
    "llm_embedder": ModelSpec("llm_embedder", pooling="last_token", query_instruction_format=_LLM_FORMAT),
    "icl": KNOWN_MODELS["bge-en-icl"],
    "cross_encoder": ModelSpec("cross_encoder"),
    "llm_reranker": ModelSpec("llm_reranker"),
    "layerwise_reranker": ModelSpec("layerwise_reranker"),
    "lightweight_reranker": ModelSpec("lightweight_reranker"),
    # Visualized-BGE (.pth + its BGE text model): CLS, normalised, no instructions (as the research code).
    "visualized": ModelSpec("visualized"),
}


def known_spec(name_or_path: str) -> ModelSpec | None:
    """The registry entry for a hub id or a directory named after one, if any.

    Example:
        >>> known_spec("BAAI/bge-base-en-v1.5").query_instruction
        'Represent this sentence for searching relevant passages: '
    """
    key = os.path.basename(os.path.normpath(str(name_or_path))).lower()
    return KNOWN_MODELS.get(key)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return {}


def _st_pooling(path: str) -> Pooling | None:
    """Pooling declared by a sentence-transformers checkpoint (modules.json + Pooling config)."""
    for module in _read_json(os.path.join(path, "modules.json")) or []:
        if module.get("type", "").endswith("Pooling"):
            cfg = _read_json(os.path.join(path, module.get("path", ""), "config.json"))
            if cfg.get("pooling_mode_cls_token"):
                return "cls"
            if cfg.get("pooling_mode_mean_tokens"):
                return "mean"
            if cfg.get("pooling_mode_lasttoken"):
                return "last_token"
    return None


def detect_spec(name_or_path: str, local_dir: str) -> ModelSpec:
    """Classify a checkpoint: registry first, then its files.

    Example:
        >>> detect_spec("BAAI/bge-m3", "/path/to/snapshot").family
        'm3'
    """
    config = _read_json(os.path.join(local_dir, "config.json"))
    spec = known_spec(name_or_path)
    if spec is None:
        archs = " ".join(config.get("architectures") or [])
        model_type = config.get("model_type", "")
        if os.path.exists(os.path.join(local_dir, "sparse_linear.pt")) or os.path.exists(
            os.path.join(local_dir, "colbert_linear.pt")
        ):
            spec = FAMILY_DEFAULTS["m3"]
        elif "LayerWiseMiniCPM" in archs or model_type == "minicpm":
            spec = FAMILY_DEFAULTS["layerwise_reranker"]
        elif "CostWiseGemma" in archs or model_type == "cost_wise_gemma":
            spec = FAMILY_DEFAULTS["lightweight_reranker"]
        elif any(a in archs for a in _CROSS_ENCODER_ARCHS):
            spec = FAMILY_DEFAULTS["cross_encoder"]
        elif "ForCausalLM" in archs:
            spec = FAMILY_DEFAULTS["llm_reranker"]
        elif config.get("is_decoder") or model_type in {"gemma", "gemma2", "mistral", "llama", "qwen2", "qwen3"}:
            spec = FAMILY_DEFAULTS["llm_embedder"]
        else:
            spec = FAMILY_DEFAULTS["dense"]
    pooling = _st_pooling(local_dir)
    if pooling is not None and spec.family == "dense":
        spec = replace(spec, pooling=pooling)
    st_length = _read_json(os.path.join(local_dir, "sentence_bert_config.json")).get("max_seq_length")
    if st_length and spec.family == "dense":
        spec = replace(spec, max_length=int(st_length))
    if spec.family in ("dense", "m3", "cross_encoder") and config:
        spec = replace(spec, max_length=min(spec.max_length, _position_limit(config)))
    return spec


def _position_limit(config: dict) -> int:
    """Usable positions: RoBERTa-style models reserve padding_idx + 1 position ids."""
    positions = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in ("xlm-roberta", "roberta"):
        positions -= int(config.get("pad_token_id", 1)) + 1
    return positions
