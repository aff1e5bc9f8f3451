"""The oracle: FlagEmbedding 1.4.2's own evaluation runner (`FlagEmbedding.evaluation.custom`, faiss + pytrec_eval)
on the same dataset in its custom layout and the same tiny model gives the metrics `bge eval` gives."""

from __future__ import annotations

import json

import pytest

from tests.eval.conftest import QUERY_INSTRUCTION, bge

pytest.importorskip("faiss")
pytest.importorskip("pytrec_eval")
custom = pytest.importorskip("FlagEmbedding.evaluation.custom")

K = [1, 3, 5, 10, 100]


def flagembedding_metrics(dataset_dir, model_path, work) -> dict[str, float]:
    eval_args = custom.CustomEvalArgs(
        eval_name="tiny", dataset_dir=str(dataset_dir), splits="test", output_dir=str(work / "search_results"),
        search_top_k=1000, k_values=K, eval_output_method="json", eval_output_path=str(work / "eval.json"),
        cache_path=str(work / "cache"), overwrite=True,
    )
    model_args = custom.CustomEvalModelArgs(
        embedder_name_or_path=str(model_path), embedder_model_class="encoder-only-base", pooling_method="cls",
        normalize_embeddings=True, devices="cpu", query_instruction_for_retrieval=QUERY_INSTRUCTION,
        # One text per batch: in FlagEmbedding's padded batches two identical texts can get vectors that differ
        # in the last bits, which breaks the dataset's exact ties at random (and moves nDCG by ~1e-3).
        embedder_batch_size=1, use_fp16=False,
    )
    custom.CustomEvalRunner(eval_args=eval_args, model_args=model_args).run()
    results = json.loads((work / "eval.json").read_text())
    return results["bge-tiny-en"]["NoReranker"]["test"]


def test_dense_metrics_equal_flagembeddings_runner(tmp_path, custom_dir, dense_path):
    theirs = flagembedding_metrics(custom_dir, dense_path, tmp_path)
    done = bge("eval", custom_dir, "--model", dense_path, "--k", ",".join(map(str, K)), "--query-instruction",
               QUERY_INSTRUCTION, "-o", tmp_path / "ours.json", "-q")
    assert done.exit_code == 0, (done.output, done.exception)
    ours = json.loads((tmp_path / "ours.json").read_text())["bge-tiny-en"]["dense"]["NoReranker"]["test"]
    for name in ("ndcg", "recall", "map", "precision"):
        for k in K:
            key = f"{name}_at_{k}"
            assert abs(ours[key] - theirs[key]) <= 1e-4, (key, ours[key], theirs[key])
    assert 0 < theirs["ndcg_at_10"] < 1  # a non-trivial comparison
