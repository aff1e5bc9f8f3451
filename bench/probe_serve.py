"""Where a served request's time goes: the same engine call on the main thread, on a worker thread, and
with Python work competing for the GIL (what an HTTP server's event loop does beside the engine).

    python bench/probe_serve.py --device cuda:0 --dtype fp16

Prints p50 latency (ms) of one 32-passage call and one single query in each setting.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as W  # noqa: E402

CK = os.environ.get("BENCH_CHECKPOINTS", "/tmp/bge-bench")


def p50(fn, repeats: int = 40) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def busy_python(stop: threading.Event) -> None:
    """Pure-Python work that holds the GIL between switch intervals, like a loaded event loop."""
    while not stop.is_set():
        sum(i * i for i in range(2000))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--model", help="checkpoint directory (default: random bge-m3 architecture)")
    parser.add_argument("--switch-ms", type=float, nargs="*", default=[5.0],
                        help="GIL switch intervals to try (ms; Python's default is 5)")
    args = parser.parse_args()
    from bge_core import Embedder

    model = args.model or W.build_m3(f"{CK}/m3")
    passages = W.corpus(32 * 50, 8, 510, 90, 0.6, 12)
    query = W.corpus(50, 4, 40, 10, 0.4, 11)
    for switch_ms, worker_process in [(ms, wp) for ms in args.switch_ms for wp in (False, True)]:
        sys.setswitchinterval(switch_ms / 1e3)
        embedder = Embedder(model, device=args.device, dtype=args.dtype, reuse_outputs=False,
                            worker_process=worker_process)
        embedder.encode(passages[:256])
        calls = {"batch32": lambda: embedder.encode(passages[:32]), "single": lambda: embedder.encode(query[:1])}
        pool = ThreadPoolExecutor(1)
        for name, call in calls.items():
            main_ms = p50(call)
            thread_ms = p50(lambda call=call: pool.submit(call).result())
            stop = threading.Event()
            hog = threading.Thread(target=busy_python, args=(stop,), daemon=True)
            hog.start()
            contended_ms = p50(lambda call=call: pool.submit(call).result())
            stop.set()
            hog.join()
            print(f"worker_process={worker_process!s:5} {name:8} main {main_ms:7.2f} ms  thread {thread_ms:7.2f} ms  "
                  f"thread + busy GIL {contended_ms:7.2f} ms  (switch interval {sys.getswitchinterval() * 1e3:.1f} ms)",
                  flush=True)
        pool.shutdown()


if __name__ == "__main__":
    main()
