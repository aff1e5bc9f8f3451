"""`BGEMtebModel` runs an mteb 2.x retrieval task read from local files (no hub), and mteb's main score
(nDCG@10) equals `bge eval`'s for the same model and data."""

from __future__ import annotations

import numpy as np
import pytest

from bge_core import Embedder
from bge_eval import evaluate, read_dataset
from tests.eval.conftest import QUERY_INSTRUCTION

mteb = pytest.importorskip("mteb")


def local_task(dataset_dir):
    """An `AbsTaskRetrieval` whose `load_data` reads the test dataset with bge_eval's reader."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    class LocalRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name="BgeEvalTinyRetrieval", description="The bge_eval test dataset, read from local files.",
            reference="https://github.com/embeddings-benchmark/mteb", dataset={"path": "NA", "revision": "NA"},
            type="Retrieval", category="t2t", modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"],
            main_score="ndcg_at_10", date=("2024-01-01", "2024-01-01"), domains=[], task_subtypes=[],
            license="cc-by-4.0", annotations_creators="derived", dialect=[], sample_creation="found",
            bibtex_citation="",
        )

        def load_data(self, num_proc: int | None = None, **kwargs) -> None:
            data = read_dataset(dataset_dir, "test")
            split = data.splits["test"]
            self.dataset = {"default": {"test": RetrievalSplitData(
                queries=Dataset.from_list([{"id": q, "text": t} for q, t in split.queries.items()]),
                # The reader has already joined title and text; mteb joins them the same way.
                corpus=Dataset.from_list([{"id": d, "title": "", "text": t}
                                          for d, t in zip(data.corpus_ids, data.corpus_texts)]),
                relevant_docs=split.qrels,
                top_ranked=None,
            )}}
            self.data_loaded = True

    return LocalRetrieval()


def test_mteb_main_score_equals_bge_eval_ndcg_at_10(beir_dir, dense_path):
    from bge_eval.mteb_model import BGEMtebModel

    embedder = Embedder(dense_path, device="cpu", query_instruction=QUERY_INSTRUCTION)
    model = BGEMtebModel(embedder)
    assert model.mteb_model_meta.name == "local/bge-tiny-en"
    result = mteb.evaluate(model, local_task(beir_dir), cache=None, show_progress_bar=False)
    scores = result.task_results[0].scores["test"][0]
    ours = evaluate(read_dataset(beir_dir), embedder, k_values=[1, 10]).metrics["dense", "NoReranker", "test"]
    # mteb rounds its pytrec_eval scores to five decimals.
    assert scores["main_score"] == round(ours["ndcg_at_10"], 5), (scores["main_score"], ours["ndcg_at_10"])
    assert abs(scores["mrr_at_10"] - ours["mrr_at_10"]) <= 1e-6  # mteb breaks MRR ties as pytrec_eval too
    assert 0 < ours["ndcg_at_10"] < 1


def test_mteb_queries_get_the_query_instruction(dense_path):
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

    from bge_eval.mteb_model import BGEMtebModel

    embedder = Embedder(dense_path, device="cpu", query_instruction=QUERY_INSTRUCTION)
    model = BGEMtebModel(embedder)
    texts = ["what do pandas eat?", "capital of France"]
    loader = DataLoader([{"text": t} for t in texts], batch_size=1,
                        collate_fn=lambda rows: {"text": [r["text"] for r in rows]})
    task = local_task(".").metadata
    queries = model.encode(loader, task_metadata=task, hf_split="test", hf_subset="default",
                           prompt_type=PromptType.query)
    documents = model.encode(loader, task_metadata=task, hf_split="test", hf_subset="default",
                             prompt_type=PromptType.document)
    np.testing.assert_allclose(queries, embedder.encode([QUERY_INSTRUCTION + t for t in texts]).dense, atol=1e-6)
    np.testing.assert_allclose(documents, embedder.encode(texts).dense, atol=1e-6)
    assert not np.allclose(queries, documents, atol=1e-3)
