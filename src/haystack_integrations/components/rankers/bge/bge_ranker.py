"""`BGERanker`: Documents reordered by a BGE reranker, as a Haystack component."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from haystack.core.component import component
from haystack.dataclasses import Document
from haystack.utils import ComponentDevice, Secret

from haystack_integrations.components.embedders.bge import _backend

if TYPE_CHECKING:
    from bge_core import Reranker


@component
class BGERanker(_backend.BGEComponent):
    """Ranks Documents by relevance to a query with a BGE reranker (cross-encoders such as
    bge-reranker-v2-m3, and the LLM rerankers) on the `bge_core` engine.

    Each Document's text is the values of `meta_fields_to_embed` (present and non-empty) and then
    its content, joined with `embedding_separator`. The output holds new Documents
    (`dataclasses.replace`) with `score` set, best first, at most `top_k` of them, and only those
    scoring at least `score_threshold` when it is set.

    Args:
        model: hub id, local checkpoint directory, or a loaded `bge_core.Reranker` (its weights,
            device and dtype are used; `to_dict` stores the directory it was loaded from).
        device: where the model runs; default: Haystack's default device (GPU if any).
        token: Hugging Face token for private or gated hub ids.
        top_k: most Documents returned (> 0).
        query_prefix / document_prefix: text put before the query / each passage. ``None`` takes
            the model's own (none for cross-encoders; "A: " / "B: " for the LLM rerankers);
            ``""`` turns it off.
        dtype: ``"bf16"`` / ``"fp16"`` / ``"fp32"``; default bf16 on CUDA, fp32 on CPU.
        max_length: tokens per (query, passage) pair (default: the model's).
        batch_tokens: token budget of one engine batch (default chosen per device).
        scale_score: pass the scores through a sigmoid so they lie in (0, 1); ``False`` gives raw logits.
        score_threshold: drop Documents scoring below it (on the scale `scale_score` chooses).
        truncate: cut over-long pairs to `max_length`; ``False`` raises ValueError instead.
        progress_bar: show a progress bar while scoring.
        meta_fields_to_embed: meta keys whose values are ranked with the content.
        embedding_separator: joins the meta values and the content.

    Example:
        >>> from haystack import Document
        >>> from haystack_integrations.components.rankers.bge import BGERanker
        >>> ranker = BGERanker(model="BAAI/bge-reranker-v2-m3", top_k=1)
        >>> docs = [Document(content="Paris is in France."), Document(content="Pandas eat bamboo.")]
        >>> ranker.run(query="What do pandas eat?", documents=docs)["documents"][0].content
        'Pandas eat bamboo.'
    """

    _core_kind = "Reranker"
    #: The core reranker, set by `warm_up`.
    _reranker: Reranker | None = None

    def __init__(
        self,
        model: str | os.PathLike[str] | Reranker = "BAAI/bge-reranker-v2-m3",
        *,
        device: ComponentDevice | None = None,
        token: Secret | None = Secret.from_env_var(["HF_API_TOKEN", "HF_TOKEN"], strict=False),
        top_k: int = 10,
        query_prefix: str | None = None,
        document_prefix: str | None = None,
        dtype: str | None = None,
        max_length: int | None = None,
        batch_tokens: int | None = None,
        scale_score: bool = True,
        score_threshold: float | None = None,
        truncate: bool = True,
        progress_bar: bool = False,
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
    ) -> None:
        self._configure(locals())

    def _check_options(self, init_args: Mapping[str, Any]) -> None:
        _check_top_k(init_args["top_k"])

    def warm_up(self) -> None:
        """Load the model once; later calls return at once."""
        if self._reranker is None:
            self._reranker = _backend.load_reranker(
                self.model, self.device, self.dtype, self.token, max_length=self.max_length,
                query_instruction=self.query_prefix, passage_instruction=self.document_prefix,
                normalize=self.scale_score, batch_tokens=self.batch_tokens,
            )

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        scale_score: bool | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, Any]:
        """Rank `documents` by relevance to `query`.

        Args:
            query: the query.
            documents: the Documents to rank (content ``None`` is ranked as ``""``).
            top_k: overrides the constructor's `top_k`.
            scale_score: overrides the constructor's `scale_score` (``False`` works too).
            score_threshold: overrides the constructor's `score_threshold`.

        Returns:
            ``{"documents": ...}``: copies of the best Documents with `score` set, best first.

        Raises:
            TypeError: `query` is not a string or `documents` not a list of Documents.
            ValueError: `top_k` is not > 0.
        """
        if not isinstance(query, str):
            raise TypeError(f"{type(self).__name__} expects the query as a string, got {type(query).__name__}")
        _backend.check_documents(documents, type(self).__name__)
        top_k = self.top_k if top_k is None else top_k
        _check_top_k(top_k)
        scale = self.scale_score if scale_score is None else scale_score
        threshold = self.score_threshold if score_threshold is None else score_threshold
        if not documents:
            return {"documents": []}
        self.warm_up()
        assert self._reranker is not None
        texts = _backend.document_texts(documents, self.meta_fields_to_embed, self.embedding_separator)
        hits = self._reranker.rerank(
            query, texts, top_k=top_k, normalize=scale, truncate=self.truncate, show_progress=self.progress_bar
        )
        ranked = [replace(documents[hit.index], score=hit.score) for hit in hits]
        if threshold is not None:
            ranked = [doc for doc in ranked if doc.score >= threshold]
        return {"documents": ranked}

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        scale_score: bool | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, Any]:
        """`run` in a worker thread, so the event loop keeps going."""
        return await asyncio.to_thread(self.run, query, documents, top_k, scale_score, score_threshold)


def _check_top_k(top_k: Any) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
        raise ValueError(f"top_k must be an int > 0, got {top_k!r}")
