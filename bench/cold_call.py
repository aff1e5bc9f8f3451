"""The first full-size call after load, against the same call repeated (one fresh process per system).

    python bench/cold_call.py PATH --system native|compat [--outputs all3|dense] [--device cuda:0]

Prints one JSON line: seconds to construct (warm-up included), of a 256-text call, of the first call
over the passages workload (every output, or dense alone), and the median of three more; `bench.py --only cold` runs
it for both systems (a fresh process each, so no compile cache or loaded model carries over).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as W  # noqa: E402


def allocation_counters() -> dict[str, float]:
    """Running totals of what calls allocate: pinned host blocks and the µs spent creating them, device
    segments (each a cudaMalloc), and frames torch.compile has compiled."""
    host = torch.cuda.host_memory_stats()
    device = torch.cuda.memory_stats()
    counters = {"pinned_blocks": host.get("num_host_alloc", 0),
                "pinned_alloc_us": host.get("host_alloc_time.total", 0),
                "pinned_bytes": host.get("allocated_bytes.allocated", 0),
                "device_segments": device.get("segment.all.allocated", 0),
                "device_alloc_retries": device.get("num_alloc_retries", 0)}
    dynamo = sys.modules.get("torch._dynamo.utils")
    if dynamo is not None:
        counters["compiled_frames"] = dynamo.counters["frames"]["ok"]
    return counters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--system", choices=["native", "compat"], default="native")
    parser.add_argument("--outputs", choices=["all3", "dense"], default="all3")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--stats", action="store_true",
                        help="Also report, per call, what it allocated: pinned host blocks (count, µs in CUDA's "
                             "allocation calls), device segments (cudaMalloc), torch.compile frames.")
    args = parser.parse_args()
    texts = W.passages()
    every = args.outputs == "all3"

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    start = time.perf_counter()
    if args.system == "native":
        from bge_core import Embedder

        model = Embedder(args.path, device=args.device, dtype="bf16", reuse_outputs=False)

        def call(batch: list[str]) -> object:
            return model.encode(batch, sparse=every, colbert=every)
    else:
        from bge_core.compat import BGEM3FlagModel

        model = BGEM3FlagModel(args.path, use_fp16=False, use_bf16=True, devices=args.device)

        def call(batch: list[str]) -> object:
            return model.encode(batch, return_sparse=every, return_colbert_vecs=every)
    sync()
    load_s = time.perf_counter() - start
    times, stats = [], []
    for batch in [texts[:256], texts, texts, texts, texts]:
        sync()
        before = allocation_counters() if args.stats else {}
        begin = time.perf_counter()
        result = call(batch)
        sync()
        times.append(time.perf_counter() - begin)
        if args.stats:
            after = allocation_counters()
            stats.append({key: after[key] - before.get(key, 0) for key in after})
        del result
    tokens = W.words(texts) + 2 * len(texts)
    steady = statistics.median(times[2:])
    print(json.dumps({"system": args.system, "outputs": args.outputs,
                      "pinned": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "default"), "load_s": load_s,
                      "small_call_s": times[0], "first_s": times[1],
                      "steady_s": steady, "first_tok_s": tokens / times[1], "steady_tok_s": tokens / steady,
                      "first_vs_steady": steady / times[1], "calls_s": times, "allocations_per_call": stats}),
          flush=True)


if __name__ == "__main__":
    main()
