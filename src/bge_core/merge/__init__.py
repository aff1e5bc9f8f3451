"""Model merging (LM-Cocktail): a weighted sum of the parameters of models of one architecture, with
weights given by hand (`mix_models`) or computed from a few examples (`mix_models_with_data`).

Pure weights work, streamed tensor by tensor from safetensors: peak memory is about one model plus
one tensor, whatever the number of models. Covers BGE dense and BGE-M3 encoders (with their
``colbert_linear.pt`` / ``sparse_linear.pt`` heads), cross-encoder rerankers and decoder LLMs.

Example:
    >>> from bge_core.merge import mix_models
    >>> mix_models(["BAAI/bge-base-en-v1.5", "./bge-base-finetuned"], [0.3, 0.7], "./cocktail")
"""

from __future__ import annotations

from bge_core.merge.data import check_example, compute_losses, mix_models_with_data, weights_from_losses
from bge_core.merge.weights import (
    MODEL_TYPES,
    RECORD_FILE,
    MergeError,
    MergeResult,
    check_weights,
    detect_model_type,
    mix_models,
)

__all__ = [
    "MODEL_TYPES",
    "RECORD_FILE",
    "MergeError",
    "MergeResult",
    "check_example",
    "check_weights",
    "compute_losses",
    "detect_model_type",
    "mix_models",
    "mix_models_with_data",
    "weights_from_losses",
]
