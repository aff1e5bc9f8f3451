"""The fastembed side of `bench.py --only cpu`, run by bench.py in fastembed's own interpreter.

fastembed 0.9.1 pins huggingface_hub<2, which would downgrade the project's environment, so it
lives in a virtualenv of its own (ignored by git through .git/info/exclude), with what the one-off
ONNX export of the random checkpoint needs:

    python3.11 -m venv .venv-fastembed
    .venv-fastembed/bin/pip install fastembed==0.9.1 onnx transformers==5.23.0 \
        torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu

bench.py finds it at .venv-fastembed/bin/python (or $BENCH_FASTEMBED_PYTHON) and runs

    python bench/fastembed_cpu.py CHECKPOINT JOB.json

JOB.json holds {"texts": [...], "check": [...]}. The checkpoint is exported once to
CHECKPOINT/onnx/model.onnx (inputs input_ids, attention_mask, token_type_ids; output
last_hidden_state; dynamic batch and sequence), then loaded as a fastembed custom model with
bge-small's recipe (CLS pooling, L2 normalization) from the local directory, with no network.
Everything else is fastembed's default, as a user runs it: `embed` with its batch size (256), one
ONNX Runtime session with its default threads. After a warm-up call on 32 texts, one timed call
`list(model.embed(texts))`. The last line of stdout is JSON: seconds, the vectors of the check
texts, versions; or {"error": why}.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from typing import Any

MODEL_NAME = "bge-bench/small-random"  # any name that is not one of fastembed's own models
MODEL_FILE = "onnx/model.onnx"


def export_onnx(path: str) -> str:
    """`path`/onnx/model.onnx from the checkpoint in `path`, unless it is there already."""
    target = os.path.join(path, MODEL_FILE)
    if os.path.exists(target):
        return target
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()

    class LastHidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.randint(4, 1000, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = target + ".partial"
    with torch.no_grad():
        torch.onnx.export(LastHidden(model), (ids, mask, torch.zeros_like(ids)), partial, input_names=names,
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]})
    os.replace(partial, target)
    print(f"exported {target}", file=sys.stderr, flush=True)
    return target


def run(path: str, job: dict[str, Any]) -> dict[str, Any]:
    os.environ["HF_HUB_OFFLINE"] = "1"  # a local directory only; never the hub
    from importlib.metadata import version

    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    export_onnx(path)
    with open(os.path.join(path, "config.json")) as fh:
        dim = json.load(fh)["hidden_size"]
    TextEmbedding.add_custom_model(model=MODEL_NAME, pooling=PoolingType.CLS, normalization=True,
                                   sources=ModelSource(hf=MODEL_NAME), dim=dim, model_file=MODEL_FILE)
    model = TextEmbedding(model_name=MODEL_NAME, specific_model_path=path)
    texts = job["texts"]
    list(model.embed(texts[:32]))
    gc.collect()
    start = time.perf_counter()
    out = list(model.embed(texts))
    seconds = time.perf_counter() - start
    assert len(out) == len(texts), (len(out), len(texts))
    del out
    check = [v.tolist() for v in model.embed(job["check"])]
    session = model.model.model  # the ONNX Runtime InferenceSession
    opts = session.get_session_options()
    return dict(seconds=seconds, check=check, fastembed=version("fastembed"), onnxruntime=version("onnxruntime"),
                providers=session.get_providers(), intra_op_threads=opts.intra_op_num_threads)


def main() -> None:
    path, job_file = sys.argv[1], sys.argv[2]
    with open(job_file) as fh:
        job = json.load(fh)
    try:
        result = run(path, job)
    except Exception as e:  # reported to bench.py, which goes on without fastembed
        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
