"""`BGEM3EmbeddingFunction`: pymilvus-model's BGE-M3 function (same keywords and outputs) on bge_core."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bge_core import Embedder
from bge_core.loading import half_precision_dtype

try:  # pymilvus-model is optional: subclass its base so isinstance checks in user code still pass
    from pymilvus.model.base import BaseEmbeddingFunction
except ImportError:  # pragma: no cover - depends on the installed extras
    try:
        from milvus_model.base import BaseEmbeddingFunction  # the package's pre-0.3 import path
    except ImportError:
        BaseEmbeddingFunction = object  # type: ignore[assignment,misc]

#: Extra keywords pymilvus-model forwards to FlagEmbedding that this class understands.
_EXTRA_KEYWORDS = {"devices", "passage_max_length", "query_max_length", "use_bf16", "trust_remote_code", "cache_dir"}


def compat_device(device: Any, kwargs: dict[str, Any], understood: set[str]) -> Any:
    """pymilvus-model's device rule (``devices=`` wins, first of a list); `TypeError` on unknown keywords.

    Example:
        >>> compat_device(None, {"devices": ["cuda:1"]}, {"devices"})
        'cuda:1'
    """
    unknown = set(kwargs) - understood
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}; understood: {sorted(understood)}")
    if kwargs.get("devices") is not None:
        device = kwargs["devices"]
        if isinstance(device, (list, tuple)):
            device = device[0] if device else None
    return device


def compat_precision(device: Any, dtype: str | None, use_fp16: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Core's `device` and `dtype` from pymilvus-model's precision switches (``use_fp16``, ``use_bf16=``);
    an explicit `dtype` wins.

    Example:
        >>> compat_precision("cpu", None, True, {})
        {'device': 'cpu', 'dtype': 'fp32'}
    """
    return {"device": device, "dtype": dtype or half_precision_dtype(device, use_fp16, bool(kwargs.get("use_bf16")))}


def core_m3(model_name: str | Path | Embedder, **options: Any) -> Embedder:
    """A core `Embedder` of BGE-M3 from a hub id, a directory or a loaded `Embedder` (shared weights).

    Raises:
        ValueError: the model is not a BGE-M3 (it has no sparse and ColBERT heads).

    Example:
        >>> core_m3("BAAI/bge-m3", device="cpu").family
        'm3'
    """
    source = model_name if isinstance(model_name, Embedder) else str(model_name)
    if isinstance(source, Embedder):
        options = {k: v for k, v in options.items() if k not in ("device", "dtype")}  # weights are already loaded
    embedder = Embedder(source, **options)
    if embedder.family != "m3":
        raise ValueError(f"{embedder.loaded.path} is a {embedder.family} model; BGE-M3 is needed for sparse vectors")
    return embedder


class BGEM3EmbeddingFunction(BaseEmbeddingFunction):
    """BGE-M3 dense + sparse (+ ColBERT) vectors for Milvus, as pymilvus-model's class of that name.

    Same constructor keywords, methods and return types as ``pymilvus.model.hybrid.BGEM3EmbeddingFunction``
    (pymilvus-model 0.3.4), so it drops into code written for it, but it runs on bge_core: no
    FlagEmbedding, nothing pip-installed at run time, and dense, sparse and ColBERT vectors all come
    from one forward of the model.

    ``__call__``, ``encode_documents`` and ``encode_queries`` are the same (BGE-M3 has no query
    instruction). Each returns a dict with

    - ``"dense"``: list of float32 arrays of shape ``(dim,)``;
    - ``"sparse"``: one ``scipy.sparse.csr_array`` of shape ``(n, vocab)`` and dtype float64, the
      lexical weights (take row ``i`` as ``out["sparse"][[i]]``); ``""`` or special-only text gives an
      empty row, exactly as pymilvus-model does. Milvus rejects an empty sparse row: `HybridCollection`
      stores a placeholder for it (`bge_core.sparse.storable`);
    - ``"colbert_vecs"`` (only with ``return_colbert_vecs=True``): list of float32 arrays ``(tokens-1, dim)``.

    Args:
        model_name: hub id, local BGE-M3 directory, or a loaded `bge_core.Embedder` (shares its weights).
        batch_size: accepted for compatibility; core batches by a token budget (`batch_tokens`).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``… (``devices=`` is accepted as well); default: first GPU.
        normalize_embeddings: L2-normalise dense vectors.
        use_fp16: half precision on a GPU (ignored on CPU, as it should be); ``dtype`` overrides it.
        return_dense / return_sparse / return_colbert_vecs: which outputs the calls return.
        passage_max_length: tokens per text (default 512, as pymilvus-model; BGE-M3 takes up to 8192).
        dtype: ``"bf16"`` / ``"fp16"`` / ``"fp32"``.
        batch_tokens: token budget of one forward batch.
        show_progress: progress bar while encoding.
        kwargs: FlagEmbedding keywords pymilvus-model forwards: ``devices``, ``passage_max_length``,
            ``query_max_length`` (no effect: pymilvus-model encodes queries as passages too),
            ``use_bf16``, ``trust_remote_code``, ``cache_dir``. Anything else raises `TypeError`.

    Example:
        >>> from bge_milvus import BGEM3EmbeddingFunction
        >>> ef = BGEM3EmbeddingFunction(use_fp16=False, device="cpu")
        >>> out = ef(["Alan Turing founded AI research."])
        >>> out["dense"][0].shape, out["sparse"].shape
        ((1024,), (1, 250002))
    """

    def __init__(
        self,
        model_name: str | Path | Embedder = "BAAI/bge-m3",
        batch_size: int = 16,
        device: str | None = None,
        normalize_embeddings: bool = True,
        use_fp16: bool = False,
        return_dense: bool = True,
        return_sparse: bool = True,
        return_colbert_vecs: bool = False,
        *,
        dtype: str | None = None,
        batch_tokens: int | None = None,
        show_progress: bool = False,
        **kwargs: Any,
    ) -> None:
        device = compat_device(device, kwargs, _EXTRA_KEYWORDS)
        self.model_name = model_name
        self.batch_size = batch_size
        self.device = device
        self.normalize_embeddings = normalize_embeddings
        self.use_fp16 = use_fp16
        self.max_length = int(kwargs.get("passage_max_length") or 512)
        self.show_progress = show_progress
        self._outputs = {"dense": return_dense, "sparse": return_sparse, "colbert": return_colbert_vecs}
        self.embedder = core_m3(
            model_name, **compat_precision(device, dtype, use_fp16, kwargs), normalize=normalize_embeddings,
            batch_tokens=batch_tokens,
        )

    @property
    def dim(self) -> dict[str, int]:
        """``{"dense": …, "colbert_vecs": …, "sparse": vocabulary size}``, as pymilvus-model reports."""
        return {"dense": self.embedder.dim, "colbert_vecs": self.embedder.colbert_dim, "sparse": self._sparse_width}

    @property
    def _sparse_width(self) -> int:
        # pymilvus-model sizes the matrix by the tokenizer (len(tokenizer)), not by the config.
        return len(self.embedder.tokenizer)

    def __call__(self, texts: Sequence[str]) -> dict[str, Any]:
        """Encode `texts`; see the class docstring for the returned dict.

        Example:
            >>> BGEM3EmbeddingFunction(device="cpu")(["a", "b"])["sparse"].shape[0]
            2
        """
        return self._encode(texts)

    def encode_documents(self, documents: Sequence[str]) -> dict[str, Any]:
        """Same as calling the function (BGE-M3 treats documents as they are).

        Example:
            >>> BGEM3EmbeddingFunction(device="cpu").encode_documents(["a passage"])["dense"][0].dtype
            dtype('float32')
        """
        return self._encode(documents)

    def encode_queries(self, queries: Sequence[str]) -> dict[str, Any]:
        """Same as calling the function (BGE-M3 has no query instruction).

        Example:
            >>> BGEM3EmbeddingFunction(device="cpu").encode_queries(["who started AI research?"])["sparse"].shape[0]
            1
        """
        return self._encode(queries)

    def _encode(self, texts: Sequence[str]) -> dict[str, Any]:
        from bge_core.sparse import to_csr

        wanted = self._outputs
        # One forward gives all three: core computes dense and sparse with every ColBERT request.
        out = self.embedder.encode(
            texts, dense=wanted["dense"], sparse=wanted["sparse"], colbert=wanted["colbert"],
            max_length=self.max_length, show_progress=self.show_progress,
        )
        result: dict[str, Any] = {}
        if wanted["dense"]:
            result["dense"] = list(out.dense)
        if wanted["sparse"]:
            # float64 like pymilvus-model (it stacks float64 rows); the values are the float32 weights.
            result["sparse"] = to_csr(out.lexical_weights, self._sparse_width).astype(np.float64)
        if wanted["colbert"]:
            result["colbert_vecs"] = out.colbert_vectors
        return result
