"""`BGERerankFunction`: pymilvus-model's BGE reranker function (same keywords and results) on bge_core."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bge_core import Reranker
from bge_milvus.embedding_function import compat_device, compat_precision

try:  # pymilvus-model is optional: reuse its base class and result type when it is installed
    from pymilvus.model.base import BaseRerankFunction, RerankResult
except ImportError:  # pragma: no cover - depends on the installed extras
    try:
        from milvus_model.base import BaseRerankFunction, RerankResult  # the package's pre-0.3 import path
    except ImportError:
        BaseRerankFunction = object  # type: ignore[assignment,misc]

        class RerankResult:  # type: ignore[no-redef]
            """One reranked document, as pymilvus-model's ``RerankResult``: text, score, index.

            Example:
                >>> RerankResult(text="a panda", score=0.93, index=2).to_dict()
                {'text': 'a panda', 'score': 0.93, 'index': 2}
            """

            def __init__(self, text: str, score: float, index: int) -> None:
                self.text = text
                self.score = score
                self.index = index

            def to_dict(self) -> dict[str, Any]:
                return {"text": self.text, "score": self.score, "index": self.index}

            def __repr__(self) -> str:
                return f"RerankResult(text={self.text!r}, score={self.score}, index={self.index})"

            __str__ = __repr__


#: Extra keywords FlagEmbedding's rerankers take that pymilvus-model forwards, and core understands.
_CORE_OPTIONS = {"prompt", "cutoff_layers", "compress_ratio", "compress_layers"}
_EXTRA_KEYWORDS = _CORE_OPTIONS | {"devices", "use_bf16", "trust_remote_code", "cache_dir", "model_class"}
#: FlagEmbedding's `FlagAutoReranker` model classes → core families.
_FAMILIES = {
    "encoder-only-base": "cross_encoder", "decoder-only-base": "llm_reranker",
    "decoder-only-layerwise": "layerwise_reranker", "decoder-only-lightweight": "lightweight_reranker",
}


class BGERerankFunction(BaseRerankFunction):
    """A BGE reranker for Milvus results, as pymilvus-model's ``BGERerankFunction``.

    Same keywords and call as ``pymilvus.model.reranker.BGERerankFunction`` (pymilvus-model 0.3.4):
    ``fn(query, documents, top_k=5)`` returns the `top_k` best documents as ``RerankResult(text,
    score, index)``, best first, scores passed through a sigmoid unless ``normalize=False``. Runs on
    bge_core (cross-encoders and the LLM rerankers), without FlagEmbedding.

    Args:
        model_name: hub id, local directory, or a loaded `bge_core.Reranker` (shares its weights).
        use_fp16: half precision on a GPU (ignored on CPU); ``dtype`` overrides it.
        batch_size: accepted for compatibility; core batches by a token budget (`batch_tokens`).
        normalize: sigmoid the scores into (0, 1).
        device: ``"cpu"``, ``"cuda"``… (``devices=`` is accepted as well); default: first GPU.
        query_max_length: tokens kept of the query; max_length: tokens per (query, document) pair.
        dtype: ``"bf16"`` / ``"fp16"`` / ``"fp32"``.
        batch_tokens: token budget of one forward batch.
        kwargs: ``devices``, ``use_bf16``, ``trust_remote_code``, ``cache_dir``, ``model_class`` (FlagEmbedding's
            ``"encoder-only-base"``, ``"decoder-only-base"``, ``"decoder-only-layerwise"`` or
            ``"decoder-only-lightweight"``, for a checkpoint whose name does not tell) and the LLM
            rerankers' ``prompt``, ``cutoff_layers``, ``compress_ratio``, ``compress_layers``. Others raise `TypeError`.

    Example:
        >>> from bge_milvus import BGERerankFunction
        >>> rf = BGERerankFunction(device="cpu", use_fp16=False)
        >>> rf("Who started AI research?", ["Alan Turing did.", "Pandas eat bamboo."], top_k=1)
        [RerankResult(text='Alan Turing did.', score=..., index=0)]
    """

    def __init__(
        self,
        model_name: str | Path | Reranker = "BAAI/bge-reranker-v2-m3",
        use_fp16: bool = True,
        batch_size: int = 32,
        normalize: bool = True,
        device: str | None = None,
        query_max_length: int = 256,
        max_length: int = 512,
        *,
        dtype: str | None = None,
        batch_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        device = compat_device(device, kwargs, _EXTRA_KEYWORDS)
        self.model_name = model_name
        self.batch_size = batch_size
        self.normalize = normalize
        self.device = device
        options = {k: v for k, v in kwargs.items() if k in _CORE_OPTIONS}
        if isinstance(model_name, Reranker):
            source: str | Reranker = model_name
            precision: dict[str, Any] = {}
        else:
            source = str(model_name)
            precision = compat_precision(device, dtype, use_fp16, kwargs)
            model_class = kwargs.get("model_class")
            if model_class is not None:
                name = str(getattr(model_class, "value", model_class))  # FlagEmbedding passes an Enum or a str
                if name not in _FAMILIES:
                    raise ValueError(f"unknown model_class {name!r}; expected one of {sorted(_FAMILIES)}")
                precision["family"] = _FAMILIES[name]
        self.reranker = Reranker(
            source, max_length=max_length, query_max_length=query_max_length, normalize=normalize,
            batch_tokens=batch_tokens, **precision, **options,
        )

    def __call__(self, query: str, documents: Sequence[str], top_k: int = 5) -> list[RerankResult]:
        """The `top_k` most relevant documents (all of them when `top_k` is 0 or None), best first.

        Example:
            >>> rf = BGERerankFunction(device="cpu")
            >>> [r.index for r in rf("panda", ["a cat", "a panda bear"], top_k=2)]
            [1, 0]
        """
        documents = [documents] if isinstance(documents, str) else list(documents)
        hits = self.reranker.rerank(query, documents, top_k=top_k or None)
        return [RerankResult(text=documents[h.index], score=h.score, index=h.index) for h in hits]
