"""fastembed 0.9.1 (ONNX Runtime) on a bench checkpoint: the CPU peer of `bench.py --only cpu`.

fastembed pins huggingface_hub < 2, which this project's environment cannot take, so it runs in a
virtual environment of its own and `bench.py` calls this file with that environment's Python:

    python3 -m venv .venv-fastembed
    .venv-fastembed/bin/pip install torch==2.13.0 fastembed==0.9.1 onnx transformers
    .venv-fastembed/bin/python bench/fastembed_cpu.py CHECKPOINT N_TEXTS OUT.npy   # prints one JSON row

The checkpoint (a BERT directory from `workloads.build_small_dense`) is exported once to
`CHECKPOINT/onnx/model.onnx`, registered as a custom CLS-pooled, normalized model and loaded with
fastembed's defaults (batch 256, ONNX Runtime's own thread count). The embeddings are saved so the
caller can check that both systems computed the same vectors.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as W  # noqa: E402


def export_onnx(path: str) -> str:
    """Export the checkpoint's encoder (last hidden state) to `path/onnx/model.onnx` once."""
    target = os.path.join(path, "onnx", "model.onnx")
    if os.path.exists(target):
        return target
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path).eval()

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001, ANN201
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    os.makedirs(os.path.dirname(target), exist_ok=True)
    example = torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        LastHidden(), (example, example, torch.zeros_like(example)), target, dynamo=False, opset_version=17,
        input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "last_hidden_state": axes},
    )
    return target


def main() -> None:
    path, n_texts, out_npy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    export_onnx(path)
    from importlib.metadata import version

    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    TextEmbedding.add_custom_model(
        model="bench/bge-small-arch", pooling=PoolingType.CLS, normalization=True,
        sources=ModelSource(hf="bench/bge-small-arch"), dim=384, model_file="onnx/model.onnx",
    )
    start = time.perf_counter()
    model = TextEmbedding("bench/bge-small-arch", specific_model_path=path)
    load_s = time.perf_counter() - start
    texts = W.passages(n_texts)
    list(model.embed(texts[:32]))
    start = time.perf_counter()
    vectors = np.stack(list(model.embed(texts)))
    seconds = time.perf_counter() - start
    np.save(out_npy, vectors)
    tokens = W.words(texts) + 2 * len(texts)
    print(json.dumps(dict(system=f"fastembed {version('fastembed')} TextEmbedding (ONNX Runtime "
                                 f"{version('onnxruntime')}, fp32, defaults)", seconds=seconds, tokens=tokens,
                          load_s=load_s)), flush=True)


if __name__ == "__main__":
    main()
