"""`BGEMtebModel`: a BGE model on this project's engine, in mteb 2.x's encoder protocol.

mteb 2.x calls ``encode(inputs: DataLoader[BatchedInput], *, task_metadata, hf_split, hf_subset,
prompt_type, **kwargs)`` and compares vectors with ``similarity``. `mteb.evaluate` keeps a model object
only if it carries a ``mteb_model_meta`` (otherwise it swaps in an empty ModelMeta and fails to load
it), so this class subclasses mteb's `AbsEncoder` and fills a real `ModelMeta`.

Queries (``prompt_type == "query"``: retrieval and reranking tasks) get the model's query instruction,
as FlagEmbedding's C-MTEB evaluation gives them; documents and every other task's texts are encoded as
they are.

Example:
    >>> import mteb
    >>> from bge_eval.mteb_model import BGEMtebModel
    >>> model = BGEMtebModel("BAAI/bge-large-zh-v1.5")
    >>> mteb.evaluate(model, mteb.get_benchmark("MTEB(cmn, v1)"))
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from bge_core import Embedder


def _meta_name(name: str) -> str:
    """mteb wants ``organization/model``: a hub id as it is, a local folder as ``local/<folder>``."""
    if "/" in name and not os.path.exists(name):
        return name
    return f"local/{os.path.basename(os.path.normpath(name))}"


class BGEMtebModel(AbsEncoder):
    """A `bge_core.Embedder` as an mteb encoder (dense vectors, cosine similarity).

    Args:
        model: hub id, local directory or a loaded `bge_core.Embedder` (its weights are shared).
        name: the name mteb records results under (default: the hub id, or ``local/<folder>``).
        revision: the model revision mteb records.
        show_progress: progress bar per encode call.
        embedder_options: passed to `bge_core.Embedder` (device, dtype, max_length, query_instruction…).

    Example:
        >>> model = BGEMtebModel("BAAI/bge-m3", device="cuda:0")
        >>> mteb.evaluate(model, mteb.get_tasks(tasks=["T2Retrieval"]))
    """

    def __init__(self, model: str | Embedder, *, name: str | None = None, revision: str | None = None,
                 show_progress: bool = False, **embedder_options: Any) -> None:
        self.model = model if isinstance(model, Embedder) and not embedder_options else Embedder(
            model, **embedder_options)
        self.show_progress = show_progress
        self.mteb_model_meta = ModelMeta(
            loader=None,
            name=_meta_name(name or self.model.name),
            revision=revision or "no_revision_available",
            release_date=None,
            languages=None,
            n_parameters=sum(p.numel() for p in self.model.loaded.family.model.parameters()),
            memory_usage_mb=None,
            max_tokens=self.model.max_length,
            embed_dim=self.model.dim,
            license=None,
            open_weights=True,
            public_training_code=None,
            public_training_data=None,
            framework=["PyTorch"],
            similarity_fn_name=ScoringFunction.COSINE,
            use_instructions=self.model.query_instruction is not None,
            training_datasets=None,
        )

    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        """Dense vectors of every text the data loader yields, shape (len(inputs.dataset), dim).

        Example:
            >>> model.encode(loader, task_metadata=task.metadata, hf_split="test", hf_subset="default",
            ...              prompt_type=PromptType.query).shape
        """
        texts = [text for batch in inputs for text in batch["text"]]
        if prompt_type == PromptType.query:
            out = self.model.encode_queries(texts, show_progress=self.show_progress)
        else:
            out = self.model.encode_documents(texts, show_progress=self.show_progress)
        return out.dense
