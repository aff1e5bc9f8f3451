"""`bge eval` on the tiny BEIR dataset: every metric equals pytrec_eval on the saved TREC run, MRR@k equals a
by-hand computation in pytrec_eval's tie order, and the JSON / Markdown / TREC files have FlagEmbedding's shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytrec_eval

from bge_core import Embedder, Reranker
from bge_eval import evaluate, mrr_at_k, read_dataset, read_trec_run
from bge_eval.metrics import first_relevant_rank, ranked
from tests.eval.conftest import QUERY_INSTRUCTION, bge, write_custom

K = [1, 3, 5, 10, 100]


def pytrec_means(qrels: dict, run: dict, k_values: list[int]) -> dict[str, float]:
    """The oracle: pytrec_eval's per-query values averaged over the queries it scores."""
    cut = ",".join(map(str, k_values))
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{cut}", f"map_cut.{cut}", f"recall.{cut}",
                                                       f"P.{cut}"}).evaluate(run)
    names = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall", "precision": "P"}
    return {f"{ours}_at_{k}": sum(v[f"{theirs}_{k}"] for v in per_query.values()) / len(per_query)
            for ours, theirs in names.items() for k in k_values}


def mrr_by_hand(qrels: dict, run: dict, k: int) -> float:
    """Reciprocal rank with trec_eval's order, written independently: doc id descending first, then a stable
    sort on the float32 score, descending."""
    total = 0.0
    for qid, hits in run.items():
        by_id = sorted(hits, reverse=True)
        order = sorted(by_id, key=lambda d: -np.float32(hits[d]))
        relevant = {d for d, r in qrels[qid].items() if r > 0}
        total += next((1.0 / (i + 1) for i, d in enumerate(order[:k]) if d in relevant), 0.0)
    return total / len(run)


@pytest.fixture(scope="module")
def cli_outputs(tmp_path_factory, beir_dir, dense_path):
    out = tmp_path_factory.mktemp("cli")
    result = bge("eval", beir_dir, "--model", dense_path, "--k", ",".join(map(str, K)), "--query-instruction",
                 QUERY_INSTRUCTION, "-o", out / "results.json", "--markdown", out / "results.md",
                 "--save-run", out / "run.trec", "-q")
    assert result.exit_code == 0, (result.output, result.exception)
    return out, result


def test_every_metric_equals_pytrec_eval_on_the_saved_run(cli_outputs, beir_dir, dense_path):
    out, _ = cli_outputs
    metrics = json.loads((out / "results.json").read_text())["bge-tiny-en"]["dense"]["NoReranker"]["test"]
    run = read_trec_run(str(out / "run.trec"))
    qrels = read_dataset(beir_dir).splits["test"].qrels
    assert set(run) == set(qrels)  # every judged query, and the unjudged one left out
    expected = pytrec_means(qrels, run, K)
    for name, value in expected.items():
        assert abs(metrics[name] - value) <= 1e-6, (name, metrics[name], value)
    for k in K:
        assert abs(metrics[f"mrr_at_{k}"] - mrr_by_hand(qrels, run, k)) <= 1e-6, k
    # The metrics are informative: the tiny model finds something and misses something.
    assert 0 < metrics["ndcg_at_10"] < 1


def test_trec_file_is_standard_and_ranked_in_pytrec_eval_order(cli_outputs):
    out, _ = cli_outputs
    lines = [line.split() for line in (out / "run.trec").read_text().splitlines()]
    assert all(len(cells) == 6 and cells[1] == "Q0" and cells[5] == "bge-tiny-en_dense_NoReranker"
               for cells in lines)
    by_query: dict[str, list[tuple[int, float, str]]] = {}
    for qid, _, docid, rank, score, _ in lines:
        by_query.setdefault(qid, []).append((int(rank), float(score), docid))
    for hits in by_query.values():
        assert [h[0] for h in hits] == list(range(1, len(hits) + 1))
        assert len(hits) == 30  # --top-k 1000 keeps the whole corpus
        for (_, s1, d1), (_, s2, d2) in zip(hits, hits[1:]):
            assert s1 > s2 or (s1 == s2 and d1 > d2)  # ties: doc id descending
    # The duplicated documents tie exactly, and the larger id comes first.
    for hits in by_query.values():
        ranks = {d: r for r, _, d in hits}
        scores = {d: s for _, s, d in hits}
        assert scores["dup-3"] == scores["3"] and ranks["dup-3"] < ranks["3"]


def test_markdown_has_flagembeddings_layout_with_a_mode_column(cli_outputs):
    out, _ = cli_outputs
    text = (out / "results.md").read_text()
    metrics = json.loads((out / "results.json").read_text())["bge-tiny-en"]["dense"]["NoReranker"]["test"]
    assert text.startswith("## ndcg_at_10\n\n| Model | Reranker | Mode | average | test |\n")
    assert "## recall_at_10" in text
    value = f"{metrics['ndcg_at_10'] * 100:.3f}"
    assert f"| bge-tiny-en | NoReranker | dense | **{value}** | **{value}** |" in text


def test_cli_reports_the_skipped_query_and_prints_a_table(cli_outputs):
    _, result = cli_outputs
    assert "test: skipped 1 queries without judgements" in result.stderr
    assert "ndcg_at_10" in result.stdout and "run: " in result.stdout


def test_mrr_follows_pytrec_eval_tie_order_not_insertion_order():
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 0.5, "b": 0.5, "c": 0.1}}  # "b" > "a": trec_eval ranks b first
    assert mrr_at_k(qrels, run, [1, 2]) == {1: {"q": 0.0}, 2: {"q": 0.5}}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"P.1"}).evaluate(run)
    assert per_query["q"]["P_1"] == 0.0  # pytrec_eval agrees: "a" is not first


def test_first_relevant_rank_equals_the_position_in_pytrec_eval_order_on_random_ties():
    """MRR's rank comes from counting hits ahead (no sort); it must equal the position in the full
    score-then-doc-id order, also with float32 ties and several relevant documents."""
    rng = np.random.default_rng(7)
    values = [0.5, 0.25, 0.1, 0.1 + 1e-9, 0.75]  # 0.1 and 0.1 + 1e-9 are one float32
    for _ in range(2000):
        docs = [f"d{i}" for i in rng.integers(0, 40, rng.integers(1, 30))]
        scores = {d: float(rng.choice(values)) if rng.random() < 0.7 else float(rng.random()) for d in docs}
        relevant = {d for d in scores if rng.random() < 0.3} | ({"missing"} if rng.random() < 0.2 else set())
        expected = next((r for r, (d, _) in enumerate(ranked(scores), start=1) if d in relevant), None)
        assert first_relevant_rank(scores, relevant) == expected, (scores, relevant)


def test_custom_layout_with_integer_ids_gives_the_same_metrics(tmp_path, beir_dir, dense_path):
    custom = write_custom(tmp_path / "custom-int", string_ids=False, unjudged=True)
    model = Embedder(dense_path, device="cpu")
    beir = evaluate(read_dataset(beir_dir), model, k_values=K)
    other = read_dataset(custom)
    assert other.layout == "custom" and other.splits["test"].skipped_queries == 1
    assert evaluate(other, model, k_values=K).metrics == beir.metrics


def test_ignore_identical_ids_drops_self_hits_only(beir_dir, dense_path):
    model = Embedder(dense_path, device="cpu")
    data = read_dataset(beir_dir)
    plain = evaluate(data, model, k_values=[10]).runs["dense", "NoReranker", "test"]
    dropped = evaluate(data, model, k_values=[10], ignore_identical_ids=True).runs["dense", "NoReranker", "test"]
    assert "3" in plain["3"] and "3" not in dropped["3"]
    for qid in plain:  # queries 1-4 share their id with a document; q5-q7 do not
        assert dropped[qid] == {d: s for d, s in plain[qid].items() if d != qid}
    assert dropped["q5"] == plain["q5"]


def test_reranker_rescores_the_top_hits_with_core_reranker(beir_dir, dense_path, cross_encoder_path):
    model, reranker = Embedder(dense_path, device="cpu"), Reranker(cross_encoder_path, device="cpu")
    data = read_dataset(beir_dir)
    result = evaluate(data, model, reranker=reranker, k_values=[1, 5], rerank_top_k=5)
    first = result.runs["dense", "NoReranker", "test"]
    second = result.runs["dense", "bge-reranker-tiny", "test"]
    doc_text = dict(zip(data.corpus_ids, data.corpus_texts))
    queries = data.splits["test"].queries
    for qid, hits in second.items():
        top5 = sorted(first[qid], key=lambda d: (np.float32(first[qid][d]), d), reverse=True)[:5]
        assert sorted(hits) == sorted(top5)
        expected = reranker.score([(queries[qid], doc_text[d]) for d in top5])
        assert np.allclose([hits[d] for d in top5], expected, atol=1e-5)
    assert set(result.metrics) == {("dense", "NoReranker", "test"), ("dense", "bge-reranker-tiny", "test")}
