"""`Reranker`: the native API of every BGE reranker (cross-encoders and LLM rerankers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from bge_core.engine.inputs import as_pair_list, as_text_list, check_unicode
from bge_core.families.text import apply_instruction
from bge_core.handle import ModelHandle
from bge_core.loading import LoadedModel, load_model
from bge_core.types import RerankHit


def sigmoid(scores: np.ndarray) -> np.ndarray:
    """Logistic function, float64 inside so large logits do not overflow."""
    return (1.0 / (1.0 + np.exp(-scores.astype(np.float64)))).astype(np.float32)


class Reranker(ModelHandle):
    """A BGE reranker: scores (query, passage) pairs.

    Args:
        model: hub id, local directory or another `Reranker` (shares its weights).
        device / dtype: as for `Embedder`.
        max_length: tokens per pair (default 512, as FlagEmbedding).
        query_max_length: tokens kept of the query (default 3/4 of max_length).
        query_instruction / passage_instruction: text put before each query / passage (LLM
            rerankers default to FlagEmbedding's "A: " / "B: "; "" turns them off).
        normalize: apply a sigmoid so scores lie in (0, 1) (default False: raw logits).
        prompt: LLM rerankers' instruction prompt (default: the model's published one).
        cutoff_layers: layerwise / lightweight rerankers: layers whose heads score the pair.
        compress_ratio / compress_layers: lightweight reranker's passage-token compression.
        batch_tokens: token budget of one batch.
        packed: force padding-free batches on or off (default: on where the device supports them).
        worker_process: run the model in a worker process even on one device (a list of devices always
            does), so the caller's own Python work never competes with the model for the GIL.
        family: force a family (``"cross_encoder"``, ``"llm_reranker"``, ``"layerwise_reranker"``,
            ``"lightweight_reranker"``) when a local checkpoint's name and files do not tell.
        warm_up: compile and capture CUDA graphs at load (`warm_up()`), so the first calls run at full speed
            (``False``: load fast and run the encoder uncompiled, ~9% slower, until `warm_up()` is called);
            default: on CUDA, once per loaded checkpoint.

    Example:
        >>> rr = Reranker("BAAI/bge-reranker-v2-m3")
        >>> rr.score([("what is a panda?", "The giant panda is a bear.")], normalize=True)
        >>> rr.rerank("what is a panda?", ["hi", "The giant panda is a bear."], top_k=1)
    """

    def __init__(
        self,
        model: str | Reranker,
        *,
        device: str | torch.device | list[str] | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        query_max_length: int | None = None,
        normalize: bool = False,
        prompt: str | None = None,
        cutoff_layers: list[int] | None = None,
        compress_ratio: int = 1,
        compress_layers: list[int] | None = None,
        query_instruction: str | None = None,
        passage_instruction: str | None = None,
        query_instruction_format: str = "{}{}",
        passage_instruction_format: str = "{}{}",
        batch_tokens: int | None = None,
        family: str | None = None,
        token: str | None = None,
        packed: bool | None = None,
        worker_process: bool = False,
        warm_up: bool | None = None,
    ) -> None:
        #: The hub id or path this model was opened by (adapters serialise it).
        self.name: str = model.name if isinstance(model, Reranker) else str(model)
        self.loaded: LoadedModel = model.loaded if isinstance(model, Reranker) else load_model(
            model, device=device, dtype=dtype, family=family, token=token, packed=packed,
            worker_process=worker_process,
        )
        if not self.loaded.spec.family.endswith(("reranker", "cross_encoder")):
            raise ValueError(f"{self.loaded.path} is a {self.loaded.spec.family} model; use bge_core.Embedder")
        # LLM rerankers read "A: {query}" / "B: {passage}"; "" turns a default off.
        default_query, default_passage = getattr(self.loaded.family, "default_instructions", (None, None))
        self.query_instruction = (default_query if query_instruction is None else query_instruction) or None
        self.passage_instruction = (default_passage if passage_instruction is None else passage_instruction) or None
        self.instruction_formats = (query_instruction_format, passage_instruction_format)
        self.max_length = max_length or self.loaded.spec.max_length
        self.normalize = normalize
        self.batch_tokens = batch_tokens
        self.options: dict[str, Any] = {
            "query_max_length": query_max_length,
            "prompt": prompt,
            "cutoff_layers": cutoff_layers,
            "compress_ratio": compress_ratio,
            "compress_layers": compress_layers,
        }
        self._warm_up_at_load(warm_up)

    @property
    def family(self) -> str:
        return self.loaded.spec.family

    def _warm_call(self, texts: list[str], max_length: int) -> None:
        self.score([(t, t) for t in texts], max_length=max_length)

    def score(
        self,
        pairs: Sequence[tuple[str, str]] | tuple[str, str],
        *,
        normalize: bool | None = None,
        max_length: int | None = None,
        truncate: bool = True,
        show_progress: bool = False,
        on_tokens: Callable[[list[int], list[int]], None] | None = None,
        **options: Any,
    ) -> np.ndarray:
        """Relevance scores of (query, passage) pairs, in input order.

        Args:
            pairs: a list of (query, passage) pairs, or one pair.
            normalize: sigmoid the scores (default: the constructor's choice).
            on_tokens: called with pair indices and how many tokens each pair runs with (as the model reads
                it: prompt, special tokens, after truncation) as soon as they are tokenized, before their forward.
            options: override `query_max_length`, `prompt`, `cutoff_layers`, `compress_ratio`,
                `compress_layers` for this call.

        Returns:
            float32 array of shape (n,); with several `cutoff_layers`, shape (layers, n).

        Example:
            >>> Reranker("BAAI/bge-reranker-base").score([("q", "p"), ("q", "other p")]).shape
            (2,)
        """
        items, _ = as_pair_list(pairs)
        q_format, p_format = self.instruction_formats
        q_instr, p_instr = self.query_instruction, self.passage_instruction
        items = [(apply_instruction(q_instr, q, q_format), apply_instruction(p_instr, p, p_format)) for q, p in items]
        unknown = set(options) - set(self.options)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; expected some of {sorted(self.options)}")
        merged = {**self.options, **{k: v for k, v in options.items() if v is not None}}
        rows = self.loaded.engine.run(
            items, max_length=max_length or self.max_length, options=merged, truncate=truncate,
            token_budget=self.batch_tokens, show_progress=show_progress, on_tokens=on_tokens,
        )
        scores = np.stack(rows, axis=1).astype(np.float32) if rows else np.zeros((1, 0), dtype=np.float32)
        if self.normalize if normalize is None else normalize:
            scores = sigmoid(scores)
        return scores[0] if scores.shape[0] == 1 else scores

    def rerank(
        self, query: str, documents: Sequence[str], top_k: int | None = None, *, normalize: bool | None = None,
        **kwargs: Any,
    ) -> list[RerankHit]:
        """Documents sorted by relevance to `query`, best first (the last cutoff layer listed decides).

        Example:
            >>> Reranker("BAAI/bge-reranker-v2-m3").rerank("panda", ["cat", "panda bear"], top_k=1)
            [RerankHit(index=1, score=...)]
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be str, got {type(query).__name__}")
        check_unicode(query, "query")
        docs, _ = as_text_list(documents, "documents")
        if not docs:
            return []
        scores = self.score([(query, d) for d in docs], normalize=normalize, **kwargs)
        if scores.ndim == 2:
            scores = scores[-1]
        order = np.argsort(-scores, kind="stable")
        if top_k is not None:
            order = order[: max(0, top_k)]
        return [RerankHit(index=int(i), score=float(scores[i])) for i in order]
