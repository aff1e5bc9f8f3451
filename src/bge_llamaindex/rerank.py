"""`BGEReranker`: any BGE reranker as a LlamaIndex node postprocessor."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from bge_llamaindex.embedding import build_core

if TYPE_CHECKING:
    from bge_core import Reranker, RerankHit

DEFAULT_MODEL = "BAAI/bge-reranker-v2-m3"

dispatcher = get_dispatcher(__name__)


class BGEReranker(BaseNodePostprocessor):
    """Reorders retrieved nodes by a BGE reranker (cross-encoders and LLM rerankers).

    Returns new `NodeWithScore` objects, best first, cut to `top_n`; the input list, its
    `NodeWithScore` objects and their nodes are left as they were. All pairs are scored in one
    call into the core engine (batched by tokens, on the device you choose). Emits LlamaIndex's
    `ReRankStartEvent` / `ReRankEndEvent` and a `CBEventType.RERANKING` callback event.

    Args:
        model_name: hub id, local checkpoint directory, or a loaded `bge_core.Reranker`
            (serialised by the name it was opened with).
        top_n: nodes to return.
        normalize: sigmoid the scores into (0, 1); None (default) leaves it to the core `Reranker`:
            raw logits as FlagEmbedding, or the loaded `Reranker`'s own setting.
        keep_retrieval_score: put each node's retrieval score in ``metadata["retrieval_score"]``
            (of a copy of the node).
        device / dtype / batch_tokens / max_length: as for `BGEEmbedding`; `max_length` counts
            the tokens of a (query, passage) pair.

    Example:
        >>> reranker = BGEReranker(model_name="BAAI/bge-reranker-v2-m3", top_n=3, device="cuda")
        >>> engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[reranker])
    """

    # Typos in option names fail instead of being ignored.
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(default=DEFAULT_MODEL, description="Hub id or local path of the BGE reranker.")
    top_n: int = Field(default=2, ge=0, description="Number of nodes to return.")
    normalize: bool | None = Field(
        default=None, description="Sigmoid the scores into (0, 1); None = the core reranker's choice (raw logits)."
    )
    keep_retrieval_score: bool = Field(default=False, description="Keep the retrieval score in metadata.")
    device: str | list[str] | None = Field(
        default=None, description="Torch device, or a list of devices to spread batches over; default: first GPU."
    )
    dtype: str | None = Field(default=None, description="bf16 / fp16 / fp32; default bf16 on CUDA, fp32 on CPU.")
    batch_tokens: int | None = Field(default=None, description="Token budget of one forward batch.")
    max_length: int | None = Field(default=None, description="Tokens per (query, passage) pair.")

    _reranker: Any = PrivateAttr()

    def __init__(
        self,
        model_name: str | Reranker = DEFAULT_MODEL,
        *,
        top_n: int = 2,
        normalize: bool | None = None,
        keep_retrieval_score: bool = False,
        device: str | list[str] | None = None,
        dtype: str | None = None,
        batch_tokens: int | None = None,
        max_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        from bge_core import Reranker

        options = {"device": device, "dtype": dtype, "batch_tokens": batch_tokens, "max_length": max_length}
        reranker, name, options = build_core(Reranker, model_name, options, _reranker_settings)
        if isinstance(model_name, Reranker):
            # Like the options, `normalize` left None takes the loaded object's own setting.
            normalize = reranker.normalize if normalize is None else normalize
        super().__init__(
            model_name=name, top_n=top_n, normalize=normalize, keep_retrieval_score=keep_retrieval_score,
            **options, **kwargs,
        )
        self._reranker = reranker

    @classmethod
    def class_name(cls) -> str:
        return "BGEReranker"

    @property
    def reranker(self) -> Reranker:
        """The core `Reranker`."""
        return self._reranker

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not self._start(nodes, query_bundle):
            return []
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query_bundle)) as event:
            reranked = self._build(nodes, self._rerank(nodes, query_bundle))
            event.on_end(payload={EventPayload.NODES: reranked})
        dispatcher.event(ReRankEndEvent(nodes=reranked))
        return reranked

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not self._start(nodes, query_bundle):
            return []
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query_bundle)) as event:
            # Only the model call leaves the loop's thread; events stay in the caller's context.
            hits = await asyncio.to_thread(self._rerank, nodes, query_bundle)
            reranked = self._build(nodes, hits)
            event.on_end(payload={EventPayload.NODES: reranked})
        dispatcher.event(ReRankEndEvent(nodes=reranked))
        return reranked

    def _start(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> bool:
        """Validate the call and emit the start event; False when there is nothing to rerank."""
        if query_bundle is None:
            raise ValueError("BGEReranker needs a query: pass query_bundle or query_str")
        if not nodes:
            return False
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n, model_name=self.model_name)
        )
        return True

    def _payload(self, nodes: list[NodeWithScore], query_bundle: QueryBundle) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model_name,
            EventPayload.QUERY_STR: query_bundle.query_str,
            EventPayload.TOP_K: self.top_n,
        }

    def _rerank(self, nodes: list[NodeWithScore], query_bundle: QueryBundle) -> list[RerankHit]:
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        return self._reranker.rerank(query_bundle.query_str, texts, top_k=self.top_n, normalize=self.normalize)

    def _build(self, nodes: list[NodeWithScore], hits: list[RerankHit]) -> list[NodeWithScore]:
        out = []
        for hit in hits:
            source = nodes[hit.index]
            node = source.node
            if self.keep_retrieval_score:
                # A shallow copy with its own metadata dict: the caller's node keeps its metadata.
                node = node.model_copy(update={"metadata": {**node.metadata, "retrieval_score": source.score}})
            out.append(NodeWithScore(node=node, score=hit.score))
        return out


def _reranker_settings(reranker: Reranker) -> dict[str, Any]:
    return {
        "device": reranker.device, "dtype": reranker.dtype, "batch_tokens": reranker.batch_tokens,
        "max_length": reranker.max_length,
    }
