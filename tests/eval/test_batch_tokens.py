"""`bge eval --batch-tokens`: the token budget of one forward batch changes how texts are batched, not the
metrics; a budget that is not a positive integer is a usage error."""

from __future__ import annotations

import json

from tests.eval.conftest import bge


def metrics(tmp_path, beir_dir, dense_path, *extra) -> dict[str, float]:
    out = tmp_path / f"results{len(extra)}.json"
    done = bge("eval", beir_dir, "--model", dense_path, "--k", "1,3,10", "-o", out, "-q", *extra)
    assert done.exit_code == 0, (done.output, done.exception)
    return json.loads(out.read_text())["bge-tiny-en"]["dense"]["NoReranker"]["test"]


def test_small_token_budget_gives_the_same_metrics(tmp_path, beir_dir, dense_path):
    default = metrics(tmp_path, beir_dir, dense_path)
    small = metrics(tmp_path, beir_dir, dense_path, "--batch-tokens", "16")
    assert small.keys() == default.keys()
    for name, value in default.items():
        assert abs(small[name] - value) <= 1e-6, (name, small[name], value)


def test_batch_tokens_must_be_positive(beir_dir, dense_path):
    done = bge("eval", beir_dir, "--model", dense_path, "--batch-tokens", "0")
    assert done.exit_code == 2
    assert "--batch-tokens" in done.output
