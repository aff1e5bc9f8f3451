"""`bge_ray.encode` on Ray Data against the in-process `Embedder`, same texts, same GPU, one run.

    python bench/ray_encode.py --device cuda:0              # one GPU: bge-m3 architecture, 20,000 passages
    python bench/ray_encode.py --device cpu --quick         # a minute on a laptop CPU: tiny BGE-M3

The workload is the anchor's "passages" (MS MARCO-like lengths, median 90 words, word-level tokenizer:
one token a word). The in-process row is `Embedder.encode_documents(texts)` in one call after a warm-up.
The Ray rows run `bge_ray.encode` with one actor holding the GPU (``num_gpus=1``) on a local Ray started
here, streaming the results back to this process:

* ``ray job``: from submitting the job to the last row back, actor start and model load included;
* ``ray steady``: from the first batch back to the last (the model loaded, the pipeline full): what a
  long job sees, and the number the acceptance compares (>= 85% of in-process tokens/s).

Tokens are counted once, with the model's tokenizer and truncation, and used for every row.
Results: a table on stdout and $OUT/ray_encode.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as W  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
CK = os.environ.get("BENCH_CHECKPOINTS", "/tmp/bge-bench")


def checkpoint(quick: bool) -> str:
    if quick:
        from bge_core.tiny import tiny_m3

        return tiny_m3(W.corpus(200, 4, 60, 12, 0.5, 7))
    return W.build_m3(f"{CK}/m3")


def token_counts(model: str, texts: list[str], max_length: int) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return [min(len(ids), max_length) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def in_process(model: str, texts: list[str], device: str, dtype: str | None, max_length: int) -> float:
    """Seconds for one `encode_documents` call over all texts (after a warm-up), model then freed."""
    from bge_core import Embedder, clear_cache

    embedder = Embedder(model, device=device, dtype=dtype, max_length=max_length)
    embedder.encode_documents(texts[:256])
    synchronize(device)
    start = time.perf_counter()
    embedder.encode_documents(texts)
    synchronize(device)
    seconds = time.perf_counter() - start
    del embedder
    clear_cache()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    return seconds


def on_ray(model: str, texts: list[str], tokens: list[int], device: str, dtype: str | None, max_length: int,
           batch_size: int, blocks: int) -> dict[str, float]:
    """Job and steady-state seconds and tokens of `bge_ray.encode` over `texts` (one GPU actor)."""
    from ray.data import DataContext

    import bge_ray
    import ray

    gpu = device.startswith("cuda")
    ray.init(num_gpus=1 if gpu else 0, include_dashboard=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    rows = [{"id": i, "text": t} for i, t in enumerate(texts)]
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    options: dict[str, Any] = {"max_length": max_length, "dtype": dtype} if dtype else {"max_length": max_length}
    if not gpu:
        options["device"] = "cpu"
    encoded = bge_ray.encode(ds, model, num_gpus=1 if gpu else 0, num_cpus=None if gpu else os.cpu_count(),
                             concurrency=1, batch_size=batch_size, **options)
    start = time.perf_counter()
    arrivals: list[tuple[float, int]] = []
    for batch in encoded.iter_batches(batch_format="pyarrow", batch_size=None):
        ids = batch.column("id").to_pylist()
        arrivals.append((time.perf_counter(), sum(tokens[i] for i in ids)))
    end = time.perf_counter()
    ray.shutdown()
    steady_tokens = sum(n for _, n in arrivals[1:])
    return {"job_s": end - start, "job_tokens": sum(n for _, n in arrivals),
            "steady_s": arrivals[-1][0] - arrivals[0][0] if len(arrivals) > 1 else float("nan"),
            "steady_tokens": steady_tokens, "batches": len(arrivals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--dtype", default=None, help="fp16 / bf16 / fp32 (default: the engine's: bf16 on GPU)")
    parser.add_argument("--quick", action="store_true", help="tiny BGE-M3 and 2,000 passages (CPU smoke run)")
    parser.add_argument("-n", type=int, default=None, help="passages (default 20,000; 2,000 with --quick)")
    parser.add_argument("--batch-size", type=int, default=None, help="texts per actor call (2048; 250 with --quick)")
    parser.add_argument("--blocks", type=int, default=None, help="input blocks (default: n / batch size)")
    args = parser.parse_args()
    n = args.n or (2000 if args.quick else 20_000)
    args.batch_size = args.batch_size or (250 if args.quick else 2048)
    model = checkpoint(args.quick)
    texts = W.passages(n)
    max_length = 512
    tokens = token_counts(model, texts, max_length)
    total = sum(tokens)
    blocks = args.blocks or max(1, n // args.batch_size)

    local_s = in_process(model, texts, args.device, args.dtype, max_length)
    ray_run = on_ray(model, texts, tokens, args.device, args.dtype, max_length, args.batch_size, blocks)
    card = args.device
    if args.device.startswith("cuda"):
        import torch

        card = torch.cuda.get_device_name(torch.device(args.device))
    local_tps = total / local_s
    rows = [
        {"system": "in-process Embedder", "s": local_s, "tokens": total, "tok_s": local_tps},
        {"system": "ray job (incl. actor start)", "s": ray_run["job_s"], "tokens": ray_run["job_tokens"],
         "tok_s": ray_run["job_tokens"] / ray_run["job_s"]},
        {"system": "ray steady", "s": ray_run["steady_s"], "tokens": ray_run["steady_tokens"],
         "tok_s": ray_run["steady_tokens"] / ray_run["steady_s"]},
    ]
    print(f"bge_ray.encode vs in-process on {card}: {n} passages, {total:,} tokens, batch {args.batch_size}, "
          f"{blocks} blocks, {ray_run['batches']} batches back")
    print(f"{'system':<30} {'s':>8} {'tokens/s':>12} {'vs in-process':>14}")
    for row in rows:
        row["ratio"] = row["tok_s"] / local_tps
        print(f"{row['system']:<30} {row['s']:>8.2f} {row['tok_s']:>12,.0f} {row['ratio']:>13.1%}")
    with open(os.path.join(OUT, "ray_encode.json"), "w", encoding="utf-8") as fh:
        json.dump({"card": card, "n": n, "tokens": total, "quick": args.quick, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
