"""FlagEmbedding 1.4.2's public classes on the bge_core engine: change one import, get the same numbers.

Names, constructor keywords, method signatures and return types follow FlagEmbedding. Differences:
arrays are always float32 (FlagEmbedding returns float16 from fp16 runs); unknown keyword
arguments raise `TypeError` instead of being stored silently; `trust_remote_code` is accepted
but never needed.

Example:
    >>> from bge_core.compat import BGEM3FlagModel   # was: from FlagEmbedding import BGEM3FlagModel
    >>> model = BGEM3FlagModel("BAAI/bge-m3", use_fp16=True)
    >>> model.encode(["hello"], return_sparse=True)["lexical_weights"]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bge_core.embedder import Embedder
from bge_core.engine.inputs import as_pair_list
from bge_core.loading import half_precision_dtype, resolve_device
from bge_core.reranker import Reranker
from bge_core.scoring import colbert_score as _colbert_score
from bge_core.scoring import combine_scores, lexical_matching_score

# Keywords FlagEmbedding accepts that change nothing here (multi-process pools, remote code, caches).
_ACCEPTED = {"trust_remote_code", "cache_dir", "peft_path", "use_dataloader", "num_workers", "colbert_dim"}


def _device_and_dtype(devices: Any, use_fp16: bool, use_bf16: bool) -> tuple[Any, str]:
    """FlagEmbedding's device rule (None → first GPU, else CPU) and half precision only on GPU.

    Several devices give a list: the engine keeps one replica per device (no process pool).
    """
    if isinstance(devices, (list, tuple)) and len(devices) > 1:
        names: Any = [str(resolve_device(d)) for d in devices]
    else:
        if isinstance(devices, (list, tuple)):
            devices = devices[0] if devices else None
        names = str(resolve_device(devices))
    return names, half_precision_dtype(names, use_fp16, use_bf16)


def _check_kwargs(kwargs: dict[str, Any], extra: set[str] = frozenset()) -> None:
    unknown = set(kwargs) - _ACCEPTED - set(extra)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")


def _unwrap(value: Any, single: bool) -> Any:
    return value[0] if single else value


class FlagModel:
    """FlagEmbedding's dense embedder (bge-*-en/zh[-v1.5], llm-embedder): CLS pooling by default."""

    DEFAULT_POOLING = "cls"
    DEFAULT_FORMAT = "{}{}"
    FAMILY: str | None = None  # None: from the model id / files

    def __init__(
        self,
        model_name_or_path: str,
        normalize_embeddings: bool = True,
        use_fp16: bool = True,
        use_bf16: bool = False,
        query_instruction_for_retrieval: str | None = None,
        query_instruction_format: str | None = None,
        devices: str | int | list[str] | list[int] | None = None,
        pooling_method: str | None = None,
        batch_size: int = 256,
        query_max_length: int = 512,
        passage_max_length: int = 512,
        convert_to_numpy: bool = True,
        passage_instruction_for_retrieval: str | None = None,
        passage_instruction_format: str = "{}{}",
        examples_for_task: list[dict[str, str]] | None = None,
        examples_instruction_format: str = "<instruct>{}\n<query>{}\n<response>{}",
        **kwargs: Any,
    ) -> None:
        _check_kwargs(kwargs)
        device, dtype = _device_and_dtype(devices, use_fp16, use_bf16)
        self.query_instruction_for_retrieval = query_instruction_for_retrieval
        self.query_instruction_format = query_instruction_format or self.DEFAULT_FORMAT
        self.passage_instruction_for_retrieval = passage_instruction_for_retrieval
        self.passage_instruction_format = passage_instruction_format
        self.batch_size = batch_size
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.convert_to_numpy = convert_to_numpy
        self.embedder = Embedder(
            model_name_or_path, device=device, dtype=dtype, normalize=normalize_embeddings,
            pooling=pooling_method or self.DEFAULT_POOLING, query_instruction=query_instruction_for_retrieval or "",
            query_instruction_format=self.query_instruction_format, examples=examples_for_task,
            examples_format=examples_instruction_format, reuse_outputs=False, family=self.FAMILY,
        )
        self.tokenizer = self.embedder.tokenizer

    def _dense(self, sentences: str | list[str], max_length: int | None, default_length: int,
               convert_to_numpy: bool | None, call: Any) -> Any:
        single = isinstance(sentences, str)
        vectors = call(sentences, max_length=max_length or default_length).dense
        out: Any = _unwrap(vectors, single)
        if not (self.convert_to_numpy if convert_to_numpy is None else convert_to_numpy):
            out = torch.from_numpy(np.array(out))
        return out

    def encode_queries(self, queries: str | list[str], batch_size: int | None = None, max_length: int | None = None,
                       convert_to_numpy: bool | None = None, **kwargs: Any) -> np.ndarray:
        """Queries with the query instruction, cut to `query_max_length`."""
        return self._dense(queries, max_length, self.query_max_length, convert_to_numpy, self.embedder.encode_queries)

    def encode_corpus(self, corpus: str | list[str], batch_size: int | None = None, max_length: int | None = None,
                      convert_to_numpy: bool | None = None, **kwargs: Any) -> np.ndarray:
        """Passages with the passage instruction (if any), cut to `passage_max_length`."""
        def call(texts: Any, max_length: int) -> Any:
            return self.embedder.encode(texts, instruction=self.passage_instruction_for_retrieval,
                                        instruction_format=self.passage_instruction_format, max_length=max_length)

        return self._dense(corpus, max_length, self.passage_max_length, convert_to_numpy, call)

    def encode(self, sentences: str | list[str], batch_size: int | None = None, max_length: int | None = None,
               convert_to_numpy: bool | None = None, instruction: str | None = None,
               instruction_format: str | None = None, **kwargs: Any) -> np.ndarray:
        """Texts as they are (or with `instruction`), cut to `passage_max_length`."""
        def call(texts: Any, max_length: int) -> Any:
            return self.embedder.encode(texts, instruction=instruction, max_length=max_length,
                                        instruction_format=instruction_format or self.query_instruction_format)

        return self._dense(sentences, max_length, self.passage_max_length, convert_to_numpy, call)


class FlagLLMModel(FlagModel):
    """FlagEmbedding's decoder embedder (bge-multilingual-gemma2): last-token pooling."""

    DEFAULT_POOLING = "last_token"
    DEFAULT_FORMAT = "Instruct: {}\nQuery: {}"
    FAMILY = "llm_embedder"


class FlagICLModel(FlagModel):
    """FlagEmbedding's bge-en-icl: queries carry in-context examples and a ``\\n<response>`` suffix."""

    DEFAULT_POOLING = "last_token"
    DEFAULT_FORMAT = "<instruct>{}\n<query>{}"
    FAMILY = "icl"

    def set_examples(self, examples_for_task: list[dict[str, str]] | None = None) -> None:
        """Replace the in-context examples used for queries."""
        if examples_for_task is not None:
            self.embedder.examples = examples_for_task


class BGEM3FlagModel(FlagModel):
    """FlagEmbedding's BGE-M3: dense, lexical weights and ColBERT vectors from one forward."""

    FAMILY = "m3"

    def __init__(self, model_name_or_path: str, *args: Any, return_dense: bool = True, return_sparse: bool = False,
                 return_colbert_vecs: bool = False, **kwargs: Any) -> None:
        super().__init__(model_name_or_path, *args, **kwargs)
        self.return_dense, self.return_sparse = return_dense, return_sparse
        self.return_colbert_vecs = return_colbert_vecs

    def _m3(self, sentences: str | list[str], max_length: int, dense: bool | None, sparse: bool | None,
            colbert: bool | None, instruction: str | None, instruction_format: str) -> dict[str, Any]:
        single = isinstance(sentences, str)
        out = self.embedder.encode(
            sentences, dense=self.return_dense if dense is None else dense,
            sparse=self.return_sparse if sparse is None else sparse,
            colbert=self.return_colbert_vecs if colbert is None else colbert,
            instruction=instruction, instruction_format=instruction_format, max_length=max_length,
            _options={"reading_order": True, "flagembedding_types": True},
        )
        result = {"dense_vecs": out.dense, "lexical_weights": out.lexical_weights, "colbert_vecs": out.colbert_vectors}
        return {k: None if v is None else _unwrap(v, single) for k, v in result.items()}

    def encode(self, sentences: str | list[str], batch_size: int | None = None, max_length: int | None = None,
               return_dense: bool | None = None, return_sparse: bool | None = None,
               return_colbert_vecs: bool | None = None, **kwargs: Any) -> dict[str, Any]:
        """``{"dense_vecs", "lexical_weights", "colbert_vecs"}``; parts not asked for are None."""
        return self._m3(sentences, max_length or self.passage_max_length, return_dense, return_sparse,
                        return_colbert_vecs, None, "{}{}")

    def encode_queries(self, queries: str | list[str], batch_size: int | None = None, max_length: int | None = None,
                       return_dense: bool | None = None, return_sparse: bool | None = None,
                       return_colbert_vecs: bool | None = None, **kwargs: Any) -> dict[str, Any]:
        return self._m3(queries, max_length or self.query_max_length, return_dense, return_sparse,
                        return_colbert_vecs, self.query_instruction_for_retrieval, self.query_instruction_format)

    def encode_corpus(self, corpus: str | list[str], batch_size: int | None = None, max_length: int | None = None,
                      return_dense: bool | None = None, return_sparse: bool | None = None,
                      return_colbert_vecs: bool | None = None, **kwargs: Any) -> dict[str, Any]:
        return self._m3(corpus, max_length or self.passage_max_length, return_dense, return_sparse,
                        return_colbert_vecs, self.passage_instruction_for_retrieval, self.passage_instruction_format)

    def convert_id_to_token(self, lexical_weights: dict | list[dict]) -> dict | list[dict]:
        """Token strings instead of ids (decoded one id at a time, as FlagEmbedding does)."""
        many = [lexical_weights] if isinstance(lexical_weights, dict) else lexical_weights
        out = [{self.tokenizer.decode([int(i)]): w for i, w in item.items()} for item in many]
        return out[0] if len(out) == 1 else out

    def compute_lexical_matching_score(self, lexical_weights_1: dict | list[dict],
                                       lexical_weights_2: dict | list[dict]) -> float | np.ndarray:
        """Dict × dict → float; list × list → matrix."""
        if isinstance(lexical_weights_1, dict) and isinstance(lexical_weights_2, dict):
            return lexical_matching_score(lexical_weights_1, lexical_weights_2)
        if isinstance(lexical_weights_1, list) and isinstance(lexical_weights_2, list):
            return np.array([[lexical_matching_score(a, b) for b in lexical_weights_2] for a in lexical_weights_1])
        raise ValueError("The input format of lexical_weights is not correct.")

    def colbert_score(self, q_reps: np.ndarray, p_reps: np.ndarray) -> torch.Tensor:
        """MaxSim averaged over query vectors (a 0-d tensor, as FlagEmbedding returns)."""
        return torch.tensor(_colbert_score(q_reps, p_reps))

    def compute_score(self, sentence_pairs: list[tuple[str, str]] | tuple[str, str], batch_size: int | None = None,
                      max_query_length: int | None = None, max_passage_length: int | None = None,
                      weights_for_different_modes: list[float] | None = None,
                      **kwargs: Any) -> dict[str, list[float] | float]:
        """The five scores of each pair: colbert, sparse, dense, sparse+dense, colbert+sparse+dense."""
        pairs, single = as_pair_list(sentence_pairs)
        if not pairs:
            return []  # type: ignore[return-value]  # FlagEmbedding returns an empty list
        q = self.embedder.encode([p[0] for p in pairs], sparse=True, colbert=True,
                                 max_length=max_query_length or self.query_max_length)
        p = self.embedder.encode([p[1] for p in pairs], sparse=True, colbert=True,
                                 max_length=max_passage_length or self.passage_max_length)
        # FlagEmbedding pads each chunk of `batch_size` passages; a passage shorter than its chunk's
        # longest then also "matches" zero padding vectors, which floors each MaxSim term at 0.
        chunk = batch_size or self.batch_size
        lengths = [len(v) for v in p.colbert_vectors]
        scores: dict[str, list[float]] = {}
        for i in range(len(pairs)):
            start = i - i % chunk
            padded = lengths[i] < max(lengths[start:start + chunk])
            row = combine_scores(
                float(q.dense[i] @ p.dense[i]),
                lexical_matching_score(q.lexical_weights[i], p.lexical_weights[i]),
                _colbert_score(q.colbert_vectors[i], p.colbert_vectors[i], floor=0.0 if padded else None),
                weights_for_different_modes,
            )
            for key, value in row.items():
                scores.setdefault(key, []).append(value)
        return {k: v[0] for k, v in scores.items()} if single else scores


class FlagReranker:
    """FlagEmbedding's cross-encoder reranker (bge-reranker-base / -large / -v2-m3)."""

    DEFAULT_QUERY_INSTRUCTION: str | None = None
    DEFAULT_PASSAGE_INSTRUCTION: str | None = None
    LAYER_OPTIONS: frozenset[str] = frozenset()
    FAMILY = "cross_encoder"

    def __init__(
        self,
        model_name_or_path: str,
        use_fp16: bool = False,
        query_instruction_for_rerank: str | None = None,
        query_instruction_format: str = "{}{}",
        passage_instruction_for_rerank: str | None = None,
        passage_instruction_format: str = "{}{}",
        devices: str | int | list[str] | list[int] | None = None,
        batch_size: int = 128,
        query_max_length: int | None = None,
        max_length: int = 512,
        normalize: bool = False,
        use_bf16: bool = False,
        prompt: str | None = None,
        **kwargs: Any,
    ) -> None:
        layer_options = {k: kwargs.pop(k) for k in list(kwargs) if k in self.LAYER_OPTIONS}
        if "compress_layer" in layer_options:  # FlagEmbedding's legacy spelling
            layer_options["compress_layers"] = layer_options.pop("compress_layer")
        _check_kwargs(kwargs)
        device, dtype = _device_and_dtype(devices, use_fp16, use_bf16)
        q_instr = query_instruction_for_rerank
        p_instr = passage_instruction_for_rerank
        self.reranker = Reranker(
            model_name_or_path, device=device, dtype=dtype, max_length=max_length, query_max_length=query_max_length,
            normalize=normalize, prompt=prompt,
            query_instruction=self.DEFAULT_QUERY_INSTRUCTION if q_instr is None else q_instr,
            passage_instruction=self.DEFAULT_PASSAGE_INSTRUCTION if p_instr is None else p_instr,
            query_instruction_format=query_instruction_format, passage_instruction_format=passage_instruction_format,
            family=self.FAMILY, **layer_options,
        )
        self.batch_size = batch_size
        self.tokenizer = self.reranker.loaded.family.tokenizer

    def compute_score(self, sentence_pairs: list[tuple[str, str]] | tuple[str, str], batch_size: int | None = None,
                      query_max_length: int | None = None, max_length: int | None = None,
                      normalize: bool | None = None, **kwargs: Any) -> list[float] | list[list[float]]:
        """Scores in input order: a list of floats (one list per cutoff layer when several)."""
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in self.LAYER_OPTIONS or k == "prompt"}
        if "compress_layer" in options:
            options["compress_layers"] = options.pop("compress_layer")
        _check_kwargs(kwargs)
        pairs, _ = as_pair_list(sentence_pairs)
        scores = self.reranker.score(pairs, normalize=normalize, max_length=max_length,
                                     query_max_length=query_max_length, **options)
        return scores.tolist()


class FlagLLMReranker(FlagReranker):
    """FlagEmbedding's bge-reranker-v2-gemma: the logit of 'Yes' after the prompt."""

    DEFAULT_QUERY_INSTRUCTION = "A: "
    DEFAULT_PASSAGE_INSTRUCTION = "B: "
    FAMILY = "llm_reranker"


class LayerWiseFlagLLMReranker(FlagLLMReranker):
    """FlagEmbedding's bge-reranker-v2-minicpm-layerwise: one score list per cutoff layer."""

    LAYER_OPTIONS = frozenset({"cutoff_layers"})
    FAMILY = "layerwise_reranker"


class LightWeightFlagLLMReranker(FlagLLMReranker):
    """FlagEmbedding's bge-reranker-v2.5-gemma2-lightweight: cutoff layers and passage compression."""

    LAYER_OPTIONS = frozenset({"cutoff_layers", "compress_ratio", "compress_layers", "compress_layer"})
    FAMILY = "lightweight_reranker"


_EMBEDDER_CLASSES: dict[str, type[FlagModel]] = {
    "encoder-only-base": FlagModel, "encoder-only-m3": BGEM3FlagModel, "decoder-only-base": FlagLLMModel,
    "decoder-only-icl": FlagICLModel,
}
_EMBEDDER_BY_FAMILY = {"dense": FlagModel, "m3": BGEM3FlagModel, "llm_embedder": FlagLLMModel, "icl": FlagICLModel}
_RERANKER_CLASSES: dict[str, type[FlagReranker]] = {
    "encoder-only-base": FlagReranker, "decoder-only-base": FlagLLMReranker,
    "decoder-only-layerwise": LayerWiseFlagLLMReranker, "decoder-only-lightweight": LightWeightFlagLLMReranker,
}
_RERANKER_BY_FAMILY = {
    "cross_encoder": FlagReranker, "llm_reranker": FlagLLMReranker, "layerwise_reranker": LayerWiseFlagLLMReranker,
    "lightweight_reranker": LightWeightFlagLLMReranker,
}


def _family_of(model_name_or_path: str) -> str:
    from bge_core.loading import resolve_path
    from bge_core.registry import detect_spec

    return detect_spec(model_name_or_path, resolve_path(model_name_or_path)).family


class FlagAutoModel:
    """Picks the embedder class from the model id (or its files, or `model_class`)."""

    @classmethod
    def from_finetuned(cls, model_name_or_path: str, model_class: str | None = None, **kwargs: Any) -> FlagModel:
        if model_class is not None:
            klass = _EMBEDDER_CLASSES[str(getattr(model_class, "value", model_class))]
        else:
            family = _family_of(model_name_or_path)
            if family not in _EMBEDDER_BY_FAMILY:
                raise ValueError(f"{model_name_or_path} is a {family} model, not an embedder")
            klass = _EMBEDDER_BY_FAMILY[family]
            from bge_core.registry import known_spec

            spec = known_spec(model_name_or_path)
            if spec is not None and spec.query_instruction_format != "{}{}":
                kwargs.setdefault("query_instruction_format", spec.query_instruction_format)
        return klass(model_name_or_path, **kwargs)


class FlagAutoReranker:
    """Picks the reranker class from the model id (or its files, or `model_class`)."""

    @classmethod
    def from_finetuned(cls, model_name_or_path: str, model_class: str | None = None,
                       **kwargs: Any) -> FlagReranker:
        if model_class is not None:
            klass = _RERANKER_CLASSES[str(getattr(model_class, "value", model_class))]
        else:
            family = _family_of(model_name_or_path)
            if family not in _RERANKER_BY_FAMILY:
                raise ValueError(f"{model_name_or_path} is a {family} model, not a reranker")
            klass = _RERANKER_BY_FAMILY[family]
        return klass(model_name_or_path, **kwargs)


__all__ = [
    "BGEM3FlagModel", "FlagAutoModel", "FlagAutoReranker", "FlagICLModel", "FlagLLMModel", "FlagLLMReranker",
    "FlagModel", "FlagReranker", "LayerWiseFlagLLMReranker", "LightWeightFlagLLMReranker",
]
