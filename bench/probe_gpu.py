"""Where the time goes, on one GPU (the figures behind BENCHMARKS.md's notes):

    python bench/probe_gpu.py attn       # varlen attention kernels on a long-document and a passages batch (ours too)
    python bench/probe_gpu.py cudnn      # cuDNN attention on long documents padded to 256-token buckets
    python bench/probe_gpu.py e2e        # end-to-end timings, plus GPU busy time and gaps from a profile
    python bench/probe_gpu.py host       # where the calling thread's time goes in one call
    python bench/probe_gpu.py epilogue   # feed-forward GELU inside the up-projection GEMM (cuBLASLt) vs after it
    python bench/probe_gpu.py compile    # the fused layer's tail compiled vs eager: one layer, passages
    python bench/probe_gpu.py query      # one 16-token query: stages, the graph's kernels, small-M GEMMs
    python bench/probe_gpu.py evalenc    # `bge eval`'s corpus encoding (bge-small, 100,000 passages): GIL hand-offs
    python bench/probe_gpu.py hostprof   # cProfile of Embedder.encode on 1 and 64 short queries
    python bench/probe_gpu.py calls      # an engine call of k merged short queries (a loaded server's), by stage
    python bench/probe_gpu.py shortattn  # attention of short packed sequences: flash, memory-efficient, ours
    python bench/probe_gpu.py tiledab    # throughput with the tiled attention kernel on and off
    python bench/probe_gpu.py timeline   # a query's wall time by stage, from timestamps (no profiler)
    python bench/probe_gpu.py longattn   # attention past 128 tokens: flash against a Triton kernel at several tiles
    python bench/probe_gpu.py eagercost  # small eager batches with the tiled kernel or flash; a long-documents profile
    python bench/probe_gpu.py gemm       # the encoder's GEMMs at packed token counts, aligned to 128 or not
    python bench/probe_gpu.py l2         # small-M GEMMs with their weights in L2 or not
    python bench/probe_gpu.py l2chain    # a chain of the encoder's GEMMs with weights prefetched into L2
    python bench/probe_gpu.py smallgemm  # the four GEMMs at a graph's token counts, written several ways
    python bench/probe_gpu.py attnab     # the tiled attention kernel against an earlier copy of it
    python bench/probe_gpu.py fp8all3    # passages with all three outputs in fp8 and bf16: GPU busy time, host profile
    python bench/probe_gpu.py tok1       # one query's tokenizing: the backend's batch call or its one-text call

Writes $OUT/probe.json and gzipped Chrome traces of the profiled calls.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as W  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
CK = "/tmp/bge-bench"
LOG: dict = {}


def say(key, value):
    LOG[key] = value
    print(key, value, flush=True)


def wall(fn, repeats=3):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        s = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - s)
    return sorted(times)[len(times) // 2]


def gpu_ms(fn, repeats=20):
    """Milliseconds a call of `fn` takes on the GPU (CUDA events, after three warm-up calls)."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def timed_calls(fn, calls):
    """Wall seconds of each of `calls` calls of `fn` (no synchronisation added), sorted."""
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)


def gaps(trace_path):
    with open(trace_path) as fh:
        events = json.load(fh)["traceEvents"]
    ks = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "kernel")
    if not ks:
        return {}
    busy, gap_total, big, end = 0.0, 0.0, [], ks[0][0]
    for s, e in ks:
        if s > end:
            gap_total += s - end
            if s - end > 500:
                big.append(round((s - end) / 1000, 2))
        busy += max(0.0, e - max(s, end))
        end = max(end, e)
    span = (ks[-1][1] - ks[0][0]) / 1e6
    return dict(span_s=span, busy_s=busy / 1e6, gap_s=gap_total / 1e6, gaps_over_0_5ms=len(big),
                gap_sum_over_0_5ms_s=sum(big) / 1e3, largest_ms=sorted(big)[-10:])


def profiled(name, fn):
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    path = f"/tmp/trace-{name}.json"
    prof.export_chrome_trace(path)
    say(f"gaps {name}", gaps(path))
    with open(path, "rb") as src, gzip.open(f"{OUT}/trace-{name}.json.gz", "wb") as dst:
        dst.write(src.read())
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:14]
    say(f"top {name}", [(round(e.self_device_time_total / 1e3, 1), e.count, e.key[:80]) for e in top])


def our_attention(q, k, v, cu, longest, tiles, tma=False):
    """Our tiled attention kernel (bge_core/engine/tiled_attention.py) at other tiles than the engine's
    (rows, keys, warps, pipeline stages), keys and values read by TMA or by pointers whatever the length."""
    import bge_core.engine.tiled_attention as S

    def fn():
        saved = S.TILES, S.LONG_TILES, S.TMA_FROM
        S.TILES = S.LONG_TILES = tiles
        S.TMA_FROM = 0 if tma else 1 << 30
        try:
            return S.tiled_attention(q, k, v, cu, longest)
        finally:
            S.TILES, S.LONG_TILES, S.TMA_FROM = saved
    return fn


def attention_kernels():
    """Varlen attention kernels on a long-document batch and a passages batch (one layer, 16 x 64, bf16):
    PyTorch's (flash, cuDNN, memory-efficient; per sequence) and ours at larger tiles."""
    import random

    rng = random.Random(0)
    shapes = {"long": [min(8190, max(512, int(rng.lognormvariate(7.824, 0.6)))) for _ in range(8)],
              "passages": [min(510, max(8, int(rng.lognormvariate(4.5, 0.6)))) + 2 for _ in range(600)]}
    for name, lengths in shapes.items():
        total = sum(lengths)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
        q, k, v = (torch.randn(total, 16, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        longest = max(lengths)
        flops = sum(4 * n * n * 64 * 16 for n in lengths)
        ref = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, longest, longest, 0.0, False, False)[0]
        kernels = {
            "flash": lambda: torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, longest, longest, 0.0, False,
                                                                     False)[0],
            "cudnn": lambda: torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, longest, longest, False,
                                                                     0.0, False, False)[0],
            "efficient": lambda: torch.ops.aten._efficient_attention_forward(
                q[None], k[None], v[None], None, cu, cu, longest, longest, 0.0, 0, False)[0][0],
        }
        bounds = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
        for tiles in ((64, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2)):
            kernels["ours " + "x".join(map(str, tiles))] = our_attention(q, k, v, cu, longest, tiles)

        def per_sequence(backend):
            from torch.nn.attention import sdpa_kernel

            def fn():
                out = torch.empty_like(q)
                with sdpa_kernel(backend):
                    for s, e in bounds:
                        qs, ks, vs = (x[s:e].transpose(0, 1)[None] for x in (q, k, v))
                        out[s:e] = F.scaled_dot_product_attention(qs, ks, vs)[0].transpose(0, 1)
                return out
            return fn

        if name == "long":
            import torch.nn.functional as F
            from torch.nn.attention import SDPBackend

            kernels["cudnn per sequence"] = per_sequence(SDPBackend.CUDNN_ATTENTION)
            kernels["flash per sequence"] = per_sequence(SDPBackend.FLASH_ATTENTION)
            for backend in (SDPBackend.CUDNN_ATTENTION,):  # cost of a length seen for the first time
                fresh = []
                for n in (1001, 2002, 3003):
                    x = torch.randn(1, 16, n, 64, device="cuda", dtype=torch.bfloat16)
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    from torch.nn.attention import sdpa_kernel
                    with sdpa_kernel(backend):
                        F.scaled_dot_product_attention(x, x, x)
                    torch.cuda.synchronize()
                    fresh.append(round((time.perf_counter() - t) * 1e3, 2))
                say(f"attn first call ms {backend.name}", fresh)
        for kname, fn in kernels.items():
            try:
                out = fn()
                diff = (out.float() - ref.float()).abs().max().item()
                ms = gpu_ms(fn)
                say(f"attn {name} {kname}", dict(ms=ms, tflops=flops / ms / 1e9, max_diff=diff, tokens=total))
            except Exception as error:  # noqa: BLE001
                say(f"attn {name} {kname} failed", repr(error)[:300])


def cudnn_buckets():
    """cuDNN attention on long sequences padded to a multiple of 256 with a key mask (one cuDNN plan
    per bucket, not per length; a plan for a new shape costs ~38 ms)."""
    import random

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rng = random.Random(0)
    lengths = [min(8190, max(512, int(rng.lognormvariate(7.824, 0.6)))) for _ in range(8)]
    flops = sum(4 * n * n * 64 * 16 for n in lengths)
    total = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(total, 16, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max(lengths), max(lengths), 0.0, False, False)[0]
    bounds = list(zip(cu[:-1].tolist(), cu[1:].tolist()))

    def padded(x, s, e, width):
        out = x.new_zeros(1, 16, width, 64)
        out[0, :, : e - s] = x[s:e].transpose(0, 1)
        return out

    def masked():
        out = torch.empty_like(q)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            for s, e in bounds:
                width = -(-(e - s) // 256) * 256
                mask = torch.zeros(1, 1, 1, width, device="cuda", dtype=torch.bfloat16)
                mask[..., e - s:] = float("-inf")
                qs, ks, vs = (padded(x, s, e, width) for x in (q, k, v))
                o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask.expand(1, 16, width, width))
                out[s:e] = o[0, :, : e - s].transpose(0, 1)
        return out

    try:
        t = time.perf_counter()
        got = masked()
        torch.cuda.synchronize()
        first = time.perf_counter() - t
        diff = (got.float() - ref.float()).abs().max().item()
        ms = gpu_ms(masked, repeats=10)
        say("cudnn bucketed masked", dict(ms=ms, tflops=flops / ms / 1e9, max_diff=diff, first_s=first))
    except Exception as error:  # noqa: BLE001
        say("cudnn bucketed masked failed", repr(error)[:300])


def end_to_end():
    from bge_core import Embedder, Reranker

    say("card", torch.cuda.get_device_name())
    path = W.build_m3(f"{CK}/m3")
    emb = Embedder(path, device="cuda:0", dtype="bf16", reuse_outputs=False)
    for name, texts, max_length in (("passages", W.passages(), 512), ("long", W.long_documents(), 8192)):
        tokens = W.words(texts) + 2 * len(texts)
        t0 = time.perf_counter()
        emb.encode(texts[:256], max_length=max_length)
        say(f"first call {name} s", time.perf_counter() - t0)
        for mode, kw in {"dense": {}, "all3": dict(sparse=True, colbert=True)}.items():
            s = wall(lambda: emb.encode(texts, max_length=max_length, **kw))
            say(f"e2e {name} {mode}", dict(s=s, ktok_s=tokens / s / 1e3))
        profiled(f"{name}-all3", lambda: emb.encode(texts, max_length=max_length, sparse=True, colbert=True))
    emb = None
    torch.cuda.empty_cache()
    rpath = W.build_cross_encoder(f"{CK}/reranker")
    pairs = W.rerank_pairs()
    rr = Reranker(rpath, device="cuda:0", dtype="bf16")
    rr.score(pairs[:256])
    s = wall(lambda: rr.score(pairs))
    say("e2e rerank", dict(s=s, pairs_s=len(pairs) / s))
    profiled("rerank", lambda: rr.score(pairs))


def host_breakdown():
    """Where the main thread's time goes in one call: waiting for tokens, packing, launching,
    waiting for the device, building results; plus time in the garbage collector."""
    import collections
    import gc

    import bge_core.engine.runner as R
    import bge_core.families.base as B
    from bge_core import Embedder, Reranker

    T = collections.Counter()

    def timed_method(cls, name):
        orig = getattr(cls, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                T[name] += time.perf_counter() - t
        setattr(cls, name, wrapper)

    for name in ("_forward", "_pack", "tokenize"):
        timed_method(R.Engine, name)
    orig_finish = B.Pending.finish

    def finish(self):
        t = time.perf_counter()
        if self._event is not None:
            self._event.synchronize()
        T["device wait"] += time.perf_counter() - t
        t = time.perf_counter()
        out = orig_finish(self)
        T["build"] += time.perf_counter() - t
        return out
    B.Pending.finish = finish
    orig_batches = R.Engine.batches

    def batches(self, *a, **k):
        it = orig_batches(self, *a, **k)
        while True:
            t = time.perf_counter()
            try:
                x = next(it)
            except StopIteration:
                return
            finally:
                T["next batch"] += time.perf_counter() - t
            yield x
    R.Engine.batches = batches
    gc_start = {}

    def on_gc(phase, info):
        if phase == "start":
            gc_start["t"] = time.perf_counter()
        else:
            T[f"gc gen{info['generation']}"] += time.perf_counter() - gc_start.get("t", time.perf_counter())
    gc.callbacks.append(on_gc)

    def run(label, fn):
        fn()
        gc.collect()
        T.clear()
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        total = time.perf_counter() - t
        say(f"host {label}", dict(total=round(total, 3), **{k: round(v, 3) for k, v in T.items()}))

    path = W.build_m3(f"{CK}/m3")
    texts = W.passages()
    emb = Embedder(path, device="cuda:0", dtype="bf16", reuse_outputs=False)
    emb.encode(texts[:256])
    run("passages dense", lambda: emb.encode(texts))
    run("passages all3", lambda: emb.encode(texts, sparse=True, colbert=True))
    run("passages dense again", lambda: emb.encode(texts))
    emb = None
    rr = Reranker(W.build_cross_encoder(f"{CK}/reranker"), device="cuda:0", dtype="bf16")
    pairs = W.rerank_pairs()
    rr.score(pairs[:256])
    run("rerank", lambda: rr.score(pairs))


def gelu_epilogue():
    """The encoder layer with the up-projection's GELU applied in the GEMM's epilogue (cuBLASLt, the
    tanh form of GELU) instead of a separate pass over the [T, 4096] activations: one layer's GPU time,
    the difference in its output, and end-to-end passages with each."""
    from bge_core import Embedder
    from bge_core.models.encoder import POST_ATTENTION

    variants = {"separate": False, "epilogue": True}
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape, scale=0.02):
        return (torch.randn(*shape, device="cuda", generator=g) * scale).bfloat16()

    d, f, tokens = 1024, 4096, 65536
    args = (rand(tokens, d, scale=1.0), rand(tokens, d, scale=1.0), rand(d, d), rand(d), 1 + rand(d), rand(d),
            rand(f, d), rand(f), rand(d, f), rand(d), 1 + rand(d), rand(d), 1e-5)
    with torch.inference_mode():
        outs = {}
        for name, in_gemm in variants.items():
            say(f"layer post-attention {name} ms (65,536 tokens)", gpu_ms(lambda g=in_gemm: POST_ATTENTION(*args, g)))
            outs[name] = POST_ATTENTION(*args, in_gemm).float()
        say("layer output max abs diff", float((outs["separate"] - outs["epilogue"]).abs().max()))
    path = W.build_m3(f"{CK}/m3")
    texts = W.passages()
    tokens = W.words(texts) + 2 * len(texts)
    emb = Embedder(path, device="cuda:0", dtype="bf16", reuse_outputs=False)
    fused = emb.loaded.family.fused_backbone
    results = {}
    for name in ("separate", "epilogue", "separate", "epilogue"):
        fused.gelu_in_gemm = variants[name]
        emb.encode(texts[:256], max_length=512)
        for mode, kw in {"dense": {}, "all3": dict(sparse=True, colbert=True)}.items():
            s = wall(lambda kw=kw: emb.encode(texts, max_length=512, **kw))
            say(f"e2e passages {mode} {name}", dict(s=s, ktok_s=tokens / s / 1e3))
        results[name] = emb.encode(texts[:2000], max_length=512, sparse=True, colbert=True)
    a, b = results["separate"], results["epilogue"]
    say("dense min cos", float((a.dense * b.dense).sum(1).min()))
    cos = [float((x.astype("float32") * y.astype("float32")).sum(1).min()) for x, y in
           zip(a.colbert_vectors, b.colbert_vectors)]
    say("colbert min cos", min(cos))
    say("sparse max abs diff", max(abs(x[k] - y.get(k, 0.0)) for x, y in zip(a.lexical_weights, b.lexical_weights)
                                   for k in x))


def compile_gain():
    """What `torch.compile` of the fused layer's tail (out-proj, residual, LayerNorm, FFN, residual,
    LayerNorm) buys against running the same function eagerly, and what compiling costs: one layer's
    GPU time (bge-m3 and bge-small widths), end-to-end passages (dense, all three outputs), and the first
    compiled call. (Queries replay CUDA graphs captured once per model, so they are not compared here.)"""
    from bge_core import Embedder
    from bge_core.models.compiled import COMPILE_ENV, allow_compiling
    from bge_core.models.encoder import POST_ATTENTION

    allow_compiling()  # as a warm-up would; BGE_CORE_COMPILE=0 then selects the eager runs below
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape, scale=0.02):
        return (torch.randn(*shape, device="cuda", generator=g) * scale).bfloat16()

    with torch.inference_mode():
        for d in (1024, 384):
            f, tokens = 4 * d, 65536
            args = (rand(tokens, d, scale=1.0), rand(tokens, d, scale=1.0), rand(d, d), rand(d), 1 + rand(d),
                    rand(d), rand(f, d), rand(f), rand(d, f), rand(d), 1 + rand(d), rand(d), 1e-5, True)
            start = time.perf_counter()
            POST_ATTENTION(*args)
            torch.cuda.synchronize()
            say(f"layer tail d={d}: first compiled call s", time.perf_counter() - start)
            say(f"layer tail d={d} eager ms", gpu_ms(lambda a=args: POST_ATTENTION.fn(*a)))
            say(f"layer tail d={d} compiled ms", gpu_ms(lambda a=args: POST_ATTENTION(*a)))
    path = W.build_m3(f"{CK}/m3")
    texts = W.passages()
    tokens = W.words(texts) + 2 * len(texts)
    emb = Embedder(path, device="cuda:0", dtype="bf16", reuse_outputs=False, warm_up=False)
    for mode in ("eager", "compiled", "eager", "compiled"):
        os.environ[COMPILE_ENV] = "0" if mode == "eager" else "1"
        emb.encode(texts[:256], max_length=512)
        for name, kw in {"dense": {}, "all3": dict(sparse=True, colbert=True)}.items():
            s = wall(lambda kw=kw: emb.encode(texts, max_length=512, **kw))
            say(f"e2e passages {name} {mode}", dict(s=s, ktok_s=tokens / s / 1e3))
    os.environ.pop(COMPILE_ENV)


def eval_encoding():
    """`bge eval`'s corpus encoding on bench/eval.py's workload (bge-small shape, fp16, 100,000 passages),
    as `bge eval` loads the model (no warm-up): tokenizing alone, the whole call, the call with a
    shorter GIL switch interval (the tokenizer thread and the launching thread hand the GIL back and
    forth), and tokenizing everything before the forward (no overlap)."""
    import importlib.util

    from bge_core import Embedder

    spec = importlib.util.spec_from_file_location("bench_eval", os.path.join(os.path.dirname(__file__), "eval.py"))
    bench_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_eval)
    path = bench_eval.build_dense(f"{CK}/eval-small", 384, 12, 12)
    texts = W.corpus(100_000, 8, 510, 90, 0.6, 11)
    emb = Embedder(path, device="cuda:0", dtype="fp16", warm_up=False)
    engine = emb.loaded.engine
    emb.encode_documents(texts[:2000])
    import bge_core.engine.runner as R

    default_slice = R.TOKENIZE_SLICE
    for size in (256, 1024, 4096):
        R.TOKENIZE_SLICE = size
        t = time.perf_counter()
        rows = engine.tokenize(texts, 512, {})
        say(f"evalenc tokenize alone, slices of {size}, s", round(time.perf_counter() - t, 3))
    R.TOKENIZE_SLICE = default_slice
    tokens = sum(len(r.ids) for r in rows)
    say("evalenc tokens", tokens)
    default = sys.getswitchinterval()
    for label, interval, size, kw in (("default", default, default_slice, {}),
                                      ("switch 0.2 ms", 2e-4, default_slice, {}),
                                      ("slices of 1024", default, 1024, {}),
                                      ("slices of 4096", default, 4096, {}),
                                      ("slices of 1024, switch 0.2 ms", 2e-4, 1024, {}),
                                      ("tokenize first", default, default_slice, {"truncate": False})):
        sys.setswitchinterval(interval)
        R.TOKENIZE_SLICE = size
        before = engine.forward_calls
        s = wall(lambda: emb.encode_documents(texts, **kw), repeats=1)
        say(f"evalenc {label}", dict(s=round(s, 3), mtok_s=round(tokens / s / 1e6, 3),
                                     batches=engine.forward_calls - before))
    R.TOKENIZE_SLICE = default_slice
    sys.setswitchinterval(default)


def query_latency():
    """Where a 16-token query's time goes (bge-m3 shape, bf16, warmed up): end to end, by stage, each
    kernel of the replayed 32-token graph, and the encoder's four GEMMs at 32 rows (cuBLAS, cuBLASLt)
    against the time their weights take to read at the card's bandwidth."""
    import torch.nn.functional as F

    import bge_core.engine.runner as R
    from bge_core import Embedder

    emb = Embedder(W.build_m3(f"{CK}/m3"), device="cuda:0", dtype="bf16", reuse_outputs=False)
    engine = emb.loaded.engine
    query = " ".join(f"w{i}" for i in range(14))
    for _ in range(30):
        emb.encode([query])

    def latency(fn, calls=300):
        times = timed_calls(fn, calls)
        return dict(p50_ms=round(times[len(times) // 2] * 1e3, 3), p99_ms=round(times[int(len(times) * 0.99)] * 1e3, 3))

    say("query e2e", latency(lambda: emb.encode([query])))
    rows = engine.tokenize([query], 512, {})
    say("query tokenize", latency(lambda: engine.tokenize([query], 512, {})))
    with torch.inference_mode():
        say("query pack", latency(lambda: engine._pack(rows)))
        ids, lengths = R._host_ids(rows)
        say("query graph call + sync", latency(lambda: (engine.graphs.replay(ids, lengths, []),
                                                         torch.cuda.synchronize())))
        graph = engine.graphs.graphs[32, 1, 32]
        say("query bare replay GPU ms", round(gpu_ms(graph.graph.replay, 100), 4))
        options = {"dense": True, "sparse": False, "colbert": False, "normalize": True}
        say("query forward + heads + host", latency(lambda: engine._forward(rows, options).host_outputs()))
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                graph.graph.replay()
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        by_name: dict = {}
        for e in kernels:
            by_name.setdefault(e.name[:90], []).append(e.device_time)
        say("query graph kernels per replay", len(kernels) / 10)
        say("query graph kernel us (total per replay, count per replay)",
            {k: (round(sum(v) / 10, 1), len(v) // 10) for k, v in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))})
        bandwidth = 4.8e12
        for n, k in ((3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)):
            x = torch.randn(32, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            b = torch.zeros(n, device="cuda", dtype=torch.bfloat16)
            row = {"weights read at 4.8 TB/s us": round(n * k * 2 / bandwidth * 1e6, 2)}
            for library in ("cublas", "cublaslt"):
                torch.backends.cuda.preferred_blas_library(library)
                row[library] = round(gpu_ms(lambda: F.linear(x, w, b), 200) * 1e3, 2)
            torch.backends.cuda.preferred_blas_library("cublas")
            say(f"query gemm 32x{k}->{n} us", row)


def merged_calls():
    """Where an engine call of k merged short queries goes (bge-m3 shape, fp16 as `bench/serve.py`, warmed
    up; the queries of `bench/serve.py`): end to end, tokenize, pack, graph call + sync, the bare replay
    on the GPU, heads and host outputs."""
    import bge_core.engine.runner as R
    from bge_core import Embedder
    from bge_core.engine.graphs import BUCKETS, SLOTS, graph_span

    emb = Embedder(W.build_m3(f"{CK}/m3"), device="cuda:0", dtype="fp16", reuse_outputs=False)
    engine = emb.loaded.engine
    queries = W.corpus(4096, 4, 40, 10, 0.4, 11)
    options = {"dense": True, "sparse": False, "colbert": False, "normalize": True}

    def p50_ms(fn, calls=100):
        times = timed_calls(fn, calls)
        return round(times[len(times) // 2] * 1e3, 3)

    for k in (1, 4, 16, 64, 128):
        texts = queries[:k]
        for _ in range(10):
            emb.encode(texts)
        rows = engine.tokenize(texts, 512, {})
        row = {"tokens": sum(len(r.ids) for r in rows), "e2e": p50_ms(lambda: emb.encode(texts)),
               "tokenize": p50_ms(lambda: engine.tokenize(texts, 512, {}))}
        with torch.inference_mode():
            row["pack"] = p50_ms(lambda: engine._pack(rows))
            batch = engine._pack(rows)
            ids, lengths = R._host_ids(rows)
            if engine.graphs.fits(lengths):
                row["graph call + sync"] = p50_ms(lambda: (engine.graphs.replay(ids, lengths, []),
                                                           torch.cuda.synchronize()))
                n = int(batch.input_ids.shape[1])
                bucket = next(b for b in BUCKETS if b > n)
                slots = 1 if k == 1 else SLOTS
                key = (bucket, slots, graph_span(bucket, slots, max(batch.lengths)))
                row["bucket"] = key
                row["bare replay GPU"] = round(gpu_ms(engine.graphs.graphs[key].graph.replay, 50), 3)
            row["eager backbone GPU"] = round(gpu_ms(lambda: emb.loaded.family.backbone_packed(batch), 20), 3)
            row["forward + heads + host"] = p50_ms(lambda: engine._forward(rows, options).host_outputs())
        say(f"calls k={k} ms", row)
    # One query's timeline (CPU ops with Python stacks, GPU kernels) for the trace viewer.
    from torch.profiler import ProfilerActivity, profile

    for _ in range(20):
        emb.encode(queries[:1])
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
        for _ in range(5):
            emb.encode(queries[:1])
        torch.cuda.synchronize()
    prof.export_chrome_trace("/tmp/trace-query.json")
    with open("/tmp/trace-query.json", "rb") as src, gzip.open(f"{OUT}/trace-query.json.gz", "wb") as dst:
        dst.write(src.read())


def host_profile():
    """cProfile of `Embedder.encode` on 1 and 64 short queries (bge-m3 shape, fp16, warmed up): where
    the calling thread's time goes around the graph replay."""
    import cProfile
    import io
    import pstats

    from bge_core import Embedder

    emb = Embedder(W.build_m3(f"{CK}/m3"), device="cuda:0", dtype="fp16", reuse_outputs=False)
    queries = W.corpus(4096, 4, 40, 10, 0.4, 11)
    for k, calls in ((1, 1000), (64, 300)):
        texts = queries[:k]
        for _ in range(20):
            emb.encode(texts)
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        for _ in range(calls):
            emb.encode(texts)
        profiler.disable()
        say(f"hostprof k={k} ms per call (profiled)", round((time.perf_counter() - start) / calls * 1e3, 3))
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(28)
        print(text.getvalue(), flush=True)
        LOG[f"hostprof k={k}"] = text.getvalue()


def graph_ms(fn, calls=24, replays=50):
    """GPU milliseconds of one call of `fn`, timed as `calls` calls captured in one CUDA graph (so a
    few-microsecond kernel is not timed by its launch)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return gpu_ms(graph.replay, replays) / calls


def short_attention_kernels():
    """Attention of short packed sequences (16 heads × 64, bf16) on the layouts the engine's graphs and
    eager batches make: PyTorch's varlen flash kernel, its memory-efficient kernel, and our one-tile
    Triton kernel at several tiles (rows x keys x warps); µs a layer (in a CUDA graph) and the largest
    difference from flash."""
    import numpy as np

    import bge_core.engine.tiled_attention as S

    torch.manual_seed(0)
    heads, dim = 16, 64
    rng = np.random.default_rng(0)
    layouts = {
        "query 16 tok (bucket 32, 1 slot)": ([16], 16, [], 32),
        "4 queries (bucket 64, 64 slots)": ([12, 11, 14, 9], 64 - 46, [0] * 60, 64),
        "16 queries (bucket 256, short span)": (list(rng.integers(6, 20, 16)), None, None, 128),
        "64 queries (bucket 1024, short span)": (list(rng.integers(6, 20, 64)), None, None, 128),
        "4,000 queries, eager (8-40 tok)": (list(rng.integers(8, 41, 4000)), 0, [], 40),
        "600 passages, eager (100-128 tok)": (list(rng.integers(100, 129, 600)), 0, [], 128),
        "800 passages, eager (40-128 tok)": (list(rng.integers(40, 129, 800)), 0, [], 128),
    }
    for name, (lengths, filler, empty, span) in layouts.items():
        lengths = [int(n) for n in lengths]
        if filler is None:  # a 64-slot graph: the bucket's rest as a filler, then empty slots
            bucket = 256 if len(lengths) == 16 else 1024
            filler, empty = bucket - sum(lengths), [0] * (64 - len(lengths))
        sizes = [*lengths, filler, *empty]
        cu = torch.tensor([0, *np.cumsum(sizes)], dtype=torch.int32, device="cuda")
        tokens = int(cu[-1])
        qkv = torch.randn(tokens, 3, heads, dim, device="cuda", dtype=torch.bfloat16)
        q, k, v = qkv.unbind(1)
        real = sum(lengths)
        default = S.TILES

        def flash():
            return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, span, span, 0.0, False, False)[0]

        def efficient():
            return torch.ops.aten._efficient_attention_forward(q[None], k[None], v[None], None, cu, cu, span, span,
                                                               0.0, 0, False)[0][0]

        reference = flash()[:real].float()
        row = {"tokens": tokens, "flash us": round(graph_ms(flash) * 1e3, 2)}
        try:
            row["efficient us"] = round(graph_ms(efficient) * 1e3, 2)
            row["efficient max diff"] = float((efficient()[:real].float() - reference).abs().max())
        except Exception as error:  # noqa: BLE001 - a probe reports what fails
            row["efficient"] = f"{type(error).__name__}: {str(error)[:120]}"
        for tiles in ((32, 32, 2, 3), (64, 64, 4, 3), (64, 32, 4, 2), (64, 32, 4, 3)):
            S.TILES = tiles
            label = "x".join(map(str, tiles))
            try:
                row[f"ours {label} us"] = round(graph_ms(lambda: S.tiled_attention(q, k, v, cu, span)) * 1e3, 2)
                row[f"ours {label} max diff"] = float(
                    (S.tiled_attention(q, k, v, cu, span)[:real].float() - reference).abs().max())
            except Exception as error:  # noqa: BLE001
                row[f"ours {label}"] = f"{type(error).__name__}: {str(error)[:120]}"
        S.TILES = default
        say(f"shortattn {name}", row)


def gemm_alignment():
    """The encoder's four GEMMs (bge-m3 shape, bf16, bias; the up-projection with GELU in the epilogue)
    at packed-batch token counts, aligned to 128 or not: TFLOP/s by token count."""
    import torch.nn.functional as F

    for tokens in (64969, 65024, 65536, 32768, 32801, 8192, 8231):
        row = {}
        for n, k in ((3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)):
            x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            b = torch.zeros(n, device="cuda", dtype=torch.bfloat16)
            if n == 4096:
                ms = gpu_ms(lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True), 30)
            else:
                ms = gpu_ms(lambda: F.linear(x, w, b), 30)
            row[f"{k}->{n}"] = round(2 * tokens * n * k / ms / 1e9, 1)
        say(f"gemm TFLOP/s at {tokens} tokens", row)


def tiled_attention_ab():
    """Throughput with the tiled attention kernel on and off in one process (BGE_CORE_TILED_ATTENTION,
    read at every eager batch; median of 3 calls each, alternating): bge-m3 passages (dense, all three),
    long documents (all three), 20,000 short queries (dense) and reranker-v2-m3 pairs, bf16."""
    from bge_core import Embedder, Reranker
    from bge_core.engine.tiled_attention import ENV

    emb = Embedder(W.build_m3(f"{CK}/m3"), device="cuda:0", dtype="bf16", reuse_outputs=False)
    queries = W.corpus(20_000, 4, 40, 10, 0.4, 7)
    passages = W.passages()
    work = {"passages dense": (lambda: emb.encode(passages), W.words(passages) + 2 * len(passages)),
            "passages all3": (lambda: emb.encode(passages, sparse=True, colbert=True),
                              W.words(passages) + 2 * len(passages)),
            "queries dense": (lambda: emb.encode(queries), W.words(queries) + 2 * len(queries))}
    documents = W.long_documents()
    work["long all3"] = (lambda: emb.encode(documents, max_length=8192, sparse=True, colbert=True),
                         W.words(documents) + 2 * len(documents))
    rer = Reranker(W.build_cross_encoder(f"{CK}/reranker"), device="cuda:0", dtype="bf16")
    pairs = W.rerank_pairs()
    work["rerank pairs"] = (lambda: rer.score(pairs), sum(len(q.split()) + len(p.split()) + 4 for q, p in pairs))
    for name, (fn, tokens) in work.items():
        times: dict = {"0": [], "1": []}
        for _ in range(3):
            for flag in ("0", "1"):
                os.environ[ENV] = flag
                torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                times[flag].append(time.perf_counter() - start)
        os.environ.pop(ENV)
        off, on = (sorted(times[f])[1] for f in ("0", "1"))
        say(f"tiledab {name}", {"flash s": round(off, 3), "ours s": round(on, 3), "flash tok/s": round(tokens / off),
                                "ours tok/s": round(tokens / on), "speed-up": round(off / on, 3)})


def query_timeline():
    """Where a 16-token query's wall time goes (bge-m3 shape, bf16, warmed up), from timestamps taken
    by thin wrappers (no profiler): before the graph launch (tokenizing included), the launch call,
    waiting for the device, after it; µs, p50 of 500 calls."""
    import numpy as np

    from bge_core import Embedder
    from bge_core.families import base

    emb = Embedder(W.build_m3(f"{CK}/m3"), device="cuda:0", dtype="bf16", reuse_outputs=False)
    engine = emb.loaded.engine
    query = " ".join(f"w{i}" for i in range(14))
    marks: dict = {}
    tokenize, replay, host_outputs = engine.tokenize, torch.cuda.CUDAGraph.replay, base.Pending.host_outputs

    def timed_tokenize(*args, **kwargs):
        marks["tokenize in"] = time.perf_counter()
        out = tokenize(*args, **kwargs)
        marks["tokenize out"] = time.perf_counter()
        return out

    def timed_replay(self):
        marks["launch in"] = time.perf_counter()
        replay(self)
        marks["launch out"] = time.perf_counter()

    def timed_host_outputs(self):
        if self._event is not None:
            marks["wait in"] = time.perf_counter()
            self._event.synchronize()
            marks["wait out"] = time.perf_counter()
        return host_outputs(self)

    engine.tokenize = timed_tokenize
    torch.cuda.CUDAGraph.replay = timed_replay
    base.Pending.host_outputs = timed_host_outputs
    rows = []
    try:
        for i in range(600):
            start = time.perf_counter()
            emb.encode([query])
            end = time.perf_counter()
            if i >= 100:
                rows.append([marks["tokenize in"] - start, marks["tokenize out"] - marks["tokenize in"],
                             marks["launch in"] - marks["tokenize out"], marks["launch out"] - marks["launch in"],
                             marks["wait in"] - marks["launch out"], marks["wait out"] - marks["wait in"],
                             end - marks["wait out"], end - start])
    finally:
        engine.tokenize = tokenize
        torch.cuda.CUDAGraph.replay = replay
        base.Pending.host_outputs = host_outputs
    names = ["encode to tokenize", "tokenize", "tokens to launch", "launch call", "launch to wait",
             "waiting for the device", "after the wait", "end to end"]
    say("timeline us p50", dict(zip(names, (round(float(x) * 1e6, 1) for x in np.median(np.array(rows), axis=0)))))


def _attention_shapes():
    """Packed layouts (sequence lengths) of long documents, passages and documents of 512–1,536 tokens."""
    import random

    rng = random.Random(0)
    return {"long 8 docs": [min(8190, max(512, int(rng.lognormvariate(7.824, 0.6)))) for _ in range(8)],
            "long 8 docs b": [min(8190, max(512, int(rng.lognormvariate(7.824, 0.6)))) for _ in range(8)],
            "passages 600": [min(510, max(8, int(rng.lognormvariate(4.5, 0.6)))) + 2 for _ in range(600)],
            "passages 200-512": [rng.randint(200, 512) for _ in range(200)],
            "documents 512-1536": [rng.randint(512, 1536) for _ in range(60)]}


def _packed_attention_inputs(lengths):
    """Packed q, k, v (16 heads × 64, bf16, views of one QKV projection) for sequences of `lengths`, with
    their offsets, the longest length, the attention's FLOPs and its float32 result (SDPA per sequence)."""
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q, k, v = torch.randn(sum(lengths), 3, 16, 64, device="cuda", dtype=torch.bfloat16).unbind(1)
    exact = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        *(x[s:e].transpose(0, 1).float()[None] for x in (q, k, v)))[0].transpose(0, 1)
        for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())])
    return cu, q, k, v, max(lengths), sum(4 * n * n * 64 * 16 for n in lengths), exact


def attention_ab():
    """The tiled kernel of this tree against the one in bench/_old_tiled_attention.py (a copy of an earlier
    version), alternated on the same inputs: ms a call (graph-timed for the short layouts),
    TFLOP/s, and the largest difference from float32."""
    import random

    import bge_core.engine.tiled_attention as new

    try:  # e.g. `git show HEAD~1:src/bge_core/engine/tiled_attention.py > bench/_old_tiled_attention.py`
        import _old_tiled_attention as old
    except ImportError:
        raise SystemExit("attnab compares with bench/_old_tiled_attention.py: copy the earlier version there") from None

    rng = random.Random(1)
    shapes = _attention_shapes()
    shapes["64 queries"] = [rng.randint(8, 40) for _ in range(64)]
    shapes["1 query"] = [18]
    for name, lengths in shapes.items():
        total = sum(lengths)
        cu, q, k, v, longest, flops, exact = _packed_attention_inputs(lengths)
        row = {"tokens": total, "longest": longest}
        short = total < 4096
        for _ in range(2):
            for label, module in (("old", old), ("new", new)):
                def call(module=module):
                    with module.for_graph():
                        return module.tiled_attention(q, k, v, cu, longest)
                ms = graph_ms(call, calls=24, replays=50) if short else gpu_ms(call)
                cell = row.setdefault(label, {"ms": [], "diff_fp32": float((call().float() - exact).abs().max())})
                cell["ms"].append(round(ms, 5))
                cell["tflops"] = round(flops / min(cell["ms"]) / 1e9, 1)
        row["new / old time"] = round(min(row["new"]["ms"]) / min(row["old"]["ms"]), 4)
        say(f"attnab {name}", row)


def long_attention_kernels():
    """Varlen attention of sequences past 128 tokens (16 heads × 64, bf16, q/k/v as views of one packed
    QKV GEMM output): PyTorch's flash kernel against our tiled kernel at several tiles (rows x keys x
    warps x stages); TFLOP/s and the largest difference from flash and from float32."""
    shapes = _attention_shapes()
    tilings = ((64, 32, 4, 3), (64, 32, 4, 2), (64, 32, 4, 4), (32, 32, 2, 3), (32, 64, 2, 3), (64, 64, 4, 3),
               (128, 64, 4, 3))
    tma_tilings = ((64, 32, 4, 3), (64, 64, 4, 3), (64, 64, 4, 4), (64, 128, 4, 2), (64, 128, 4, 3),
                   (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2), (128, 128, 8, 3))
    for name, lengths in shapes.items():
        total = sum(lengths)
        cu, q, k, v, longest, flops, exact = _packed_attention_inputs(lengths)

        def flash():
            return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, longest, longest, 0.0, False, False)[0]

        ref = flash().float()
        ms = gpu_ms(flash)
        row = {"tokens": total, "longest": longest, "flash ms": round(ms, 4),
               "flash tflops": round(flops / ms / 1e9, 1), "flash max diff fp32": float((ref - exact).abs().max())}
        variants = [(tiles, False) for tiles in tilings] + [(tiles, True) for tiles in tma_tilings]
        for tiles, tma in variants:
            label = ("tma " if tma else "") + "x".join(map(str, tiles))
            try:
                fn = our_attention(q, k, v, cu, longest, tiles, tma=tma)
                got = fn().float()
                ms = gpu_ms(fn)
                row[label] = dict(ms=round(ms, 4), tflops=round(flops / ms / 1e9, 1),
                                  diff_flash=float((got - ref).abs().max()), diff_fp32=float((got - exact).abs().max()))
            except Exception as error:  # noqa: BLE001 - a probe reports what fails
                row[label] = f"{type(error).__name__}: {str(error)[:300]}"
        from bge_core.engine.tiled_attention import tiled_attention

        ms = gpu_ms(lambda: tiled_attention(q, k, v, cu, longest))
        row["engine's choice"] = dict(ms=round(ms, 4), tflops=round(flops / ms / 1e9, 1))
        say(f"longattn {name}", row)


def eager_tiled_cost():
    """Whether small eager batches (more than a graph's 64 sequences, under `EAGER_TOKENS` tokens) should
    take the tiled kernel too: p50 ms of an engine call with the kernel from 0 tokens up against flash
    below 8,192 (bge-m3 shape, bf16, warmed up); then where a long-documents call's GPU time goes."""
    import bge_core.engine.tiled_attention as S
    from bge_core import Embedder

    emb = Embedder(W.build_m3(f"{CK}/m3"), device="cuda:0", dtype="bf16", reuse_outputs=False)
    queries = W.corpus(4096, 4, 40, 10, 0.4, 11)
    passages = W.passages(400)
    work = {f"{k} queries": queries[:k] for k in (65, 128, 256, 512)}
    work.update({f"{k} passages": passages[:k] for k in (16, 40, 64)})
    default = S.EAGER_TOKENS
    for name, texts in work.items():
        row = {}
        for threshold in (default, 0, default, 0):
            S.EAGER_TOKENS = threshold
            for _ in range(5):
                emb.encode(texts)
            times = timed_calls(lambda: (emb.encode(texts), torch.cuda.synchronize()), 60)
            row.setdefault(f"from {threshold} tokens ms", []).append(round(times[len(times) // 2] * 1e3, 3))
        S.EAGER_TOKENS = default
        say(f"eager {name}", row)
    documents = W.long_documents(60)
    emb.encode(documents, max_length=8192, sparse=True, colbert=True)
    profiled("long-all3", lambda: emb.encode(documents, max_length=8192, sparse=True, colbert=True))


def _prefetch_kernels():
    """Two ways to pull weights into the GPU's L2 cache from a side stream: Hopper's bulk prefetch
    (`cp.async.bulk.prefetch.L2`, fire and forget) and plain loads kept in L2 (evict_last)."""
    import triton
    import triton.language as tl

    @triton.jit
    def bulk(base, nbytes, CHUNK: tl.constexpr, PER_PROGRAM: tl.constexpr):
        offsets = (tl.program_id(0) * PER_PROGRAM + tl.arange(0, PER_PROGRAM)).to(tl.int64) * CHUNK
        size = tl.minimum(nbytes - offsets, CHUNK).to(tl.int32)
        ok = size > 0
        tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0;", "=r,l,r",
                                  [tl.where(ok, base + offsets, base), tl.where(ok, size, 16)],
                                  dtype=tl.int32, is_pure=False, pack=1)

    @triton.jit
    def loads(x_ptr, n, sink_ptr, BLOCK: tl.constexpr, STEPS: tl.constexpr):
        first = tl.program_id(0).to(tl.int64) * BLOCK * STEPS
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for step in range(STEPS):
            offsets = first + step * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(x_ptr + offsets, mask=offsets < n, other=0.0,
                           eviction_policy="evict_last").to(tl.float32)
        total = tl.sum(acc)
        tl.store(sink_ptr + tl.program_id(0), total, mask=total == 12345.0)  # never true: keeps the loads

    @triton.jit
    def bulk_kept(base, nbytes, CHUNK: tl.constexpr, PER_PROGRAM: tl.constexpr):
        offsets = (tl.program_id(0) * PER_PROGRAM + tl.arange(0, PER_PROGRAM)).to(tl.int64) * CHUNK
        size = tl.minimum(nbytes - offsets, CHUNK).to(tl.int32)
        ok = size > 0
        tl.inline_asm_elementwise(
            "{ .reg .b64 policy; createpolicy.fractional.L2::evict_last.b64 policy, 1.0; "
            "cp.async.bulk.prefetch.L2.global.L2::cache_hint [$1], $2, policy; mov.u32 $0, 0; }", "=r,l,r",
            [tl.where(ok, base + offsets, base), tl.where(ok, size, 16)], dtype=tl.int32, is_pure=False, pack=1)

    chunk, per_program = 16384, 128
    sink = torch.zeros(4096, device="cuda")

    def bulk_prefetch(t, kernel=bulk):
        nbytes = t.numel() * t.element_size()
        grid = (triton.cdiv(triton.cdiv(nbytes, chunk), per_program),)
        kernel[grid](t.data_ptr(), nbytes, CHUNK=chunk, PER_PROGRAM=per_program, num_warps=4)

    def load_prefetch(t):
        block, steps = 2048, 16
        flat = t.reshape(-1)
        grid = (min(triton.cdiv(flat.numel(), block * steps), 4096),)
        loads[grid](flat, flat.numel(), sink, BLOCK=block, STEPS=steps, num_warps=4)

    return {"bulk": bulk_prefetch, "loads": load_prefetch, "kept": lambda t: bulk_prefetch(t, bulk_kept)}


#: bge-m3's four GEMMs of a layer: (name, in features, out features).
M3_GEMMS = (("qkv", 1024, 3072), ("out", 1024, 1024), ("up", 1024, 4096), ("down", 4096, 1024))


def _cold_gemm_operands(m, k, n):
    """Weight copies [n, k] totalling ≥ 150 MB (more than L2 holds: each is read from HBM in turn), a zero
    bias and an input of `m` rows (bf16)."""
    copies = max(24, -(-150 * 2**20 // (n * k * 2)))
    ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
    return ws, torch.zeros(n, device="cuda", dtype=torch.bfloat16), torch.randn(m, k, device="cuda",
                                                                              dtype=torch.bfloat16)


def l2_prefetch():
    """Do the encoder's small-M GEMMs run faster with their weights in L2? Each of bge-m3's four GEMMs
    captured 24× in a graph, with 24+ different weight copies (cold: > L2) or one (hot), µs a GEMM."""
    import torch.nn.functional as F

    for m in (32, 64, 800):
        row = {}
        for name, k, n in M3_GEMMS:
            ws, b, x = _cold_gemm_operands(m, k, n)
            cold = graph_ms(lambda: [F.linear(x, w, b) for w in ws], calls=1) / len(ws)
            hot = graph_ms(lambda: [F.linear(x, ws[0], b) for _ in ws], calls=1) / len(ws)
            row[name] = {"cold us": round(cold * 1e3, 2), "hot us": round(hot * 1e3, 2)}
        say(f"l2 gemm m={m}", row)


def l2_chain():
    """A 24-layer chain of bge-m3's four GEMMs (bias, GELU, LayerNorms; no attention) replayed as a graph,
    with weights prefetched into L2 on a side stream in several ways (ms per replay); and the same chain
    cycling over 1, 2 or 3 layers' weights (what fits in L2)."""
    import torch.nn.functional as F

    dev, dt = "cuda", torch.bfloat16
    prefetchers = _prefetch_kernels()
    d, f = 1024, 4096
    sizes = [3 * d * d, d * d, f * d, d * f]
    flat = torch.randn(24 * sum(sizes), device=dev, dtype=dt) * 0.02  # each layer's weights back to back
    as_bytes = flat.view(torch.uint8)

    def layer_weights(i):
        out, at = [], i * sum(sizes)
        for (rows, cols), size in zip(((3 * d, d), (d, d), (f, d), (d, f)), sizes):
            out.append(flat[at : at + size].view(rows, cols))
            at += size
        return out

    def span(first, last):  # the bytes from tensor `first` to the end of tensor `last` (back to back)
        start = first.data_ptr() - flat.data_ptr()
        return as_bytes[start : last.data_ptr() + last.numel() * 2 - flat.data_ptr()]

    layers = [layer_weights(i) for i in range(24)]
    biases = [torch.zeros(n, device=dev, dtype=dt) for n in (3 * d, d, f, d)]
    norm = (torch.ones(d, device=dev, dtype=dt), torch.zeros(d, device=dev, dtype=dt))
    side = torch.cuda.Stream()

    def chain(x, weights, how):
        main = torch.cuda.current_stream()
        kind, _, plan = how.partition("-")

        def prefetch(t):
            if t is None or kind == "none":
                return
            side.wait_stream(main)
            with torch.cuda.stream(side):
                prefetchers[kind](t)

        for i, (qkv, out, up, down) in enumerate(weights):
            nxt = weights[i + 1][0] if i + 1 < len(weights) else None
            if plan == "flat":  # at the layer's start: its out, up, down and the next QKV
                prefetch(span(out, nxt if nxt is not None else down))
            elif plan == "halves":
                prefetch(span(out, up))
            elif plan == "ahead":
                prefetch(out)
            h = F.linear(x, qkv, biases[0])[:, :d]
            if plan == "ahead":
                prefetch(up)
            o = F.layer_norm(F.linear(h, out, biases[1]) + x, (d,), *norm)
            if plan == "ahead":
                prefetch(down)
            elif plan == "halves":
                prefetch(span(down, nxt) if nxt is not None else down)
            u = torch._addmm_activation(biases[2], o, up.t(), use_gelu=True)
            if plan == "ahead":
                prefetch(nxt)
            x = F.layer_norm(F.linear(u, down, biases[3]) + o, (d,), *norm)
        if kind != "none":
            main.wait_stream(side)
        return x

    def issue_only():  # the flat plan's prefetches alone, on the main stream
        for i in range(24):
            prefetchers["bulk"](span(layers[i][1], layers[i + 1][0] if i < 23 else layers[i][3]))

    say("l2 chain prefetch issue only ms", round(graph_ms(issue_only, calls=1, replays=100), 4))
    for m in (32, 64):
        x = torch.randn(m, d, device=dev, dtype=dt)
        row = {}
        for how in ("none", "bulk-flat", "bulk-halves", "bulk-ahead", "kept-flat", "kept-halves", "kept-ahead"):
            row[how] = round(graph_ms(lambda: chain(x, layers, how), calls=1, replays=100), 4)
        for cycle in (1, 2, 3):
            row[f"cycling {cycle} layers"] = round(graph_ms(lambda: chain(x, layers[:cycle] * (24 // cycle), "none"),
                                                            calls=1, replays=100), 4)
        say(f"l2 chain m={m} ms", row)
        reference = chain(x, layers, "none")
        say(f"l2 chain m={m} prefetching changes nothing",
            all(torch.equal(chain(x, layers, how), reference) for how in ("bulk-halves", "kept-ahead")))


def small_gemm_forms():
    """bge-m3's four GEMMs at a graph's token counts, each written several ways (bias in the GEMM or not,
    cuBLAS or cuBLASLt, the transposed product): µs a GEMM, timed in a graph over weight copies that do not
    fit in L2 (as a replay meets them)."""
    import torch.nn.functional as F

    forms = {
        "linear": lambda x, w, b: F.linear(x, w, b),
        "mm, no bias": lambda x, w, b: x @ w.t(),
        "addmm": lambda x, w, b: torch.addmm(b, x, w.t()),
        "gelu epilogue": lambda x, w, b: torch._addmm_activation(b, x, w.t(), use_gelu=True),
        "transposed (w @ x.T)": lambda x, w, b: w @ x.t(),
    }
    for m in (32, 64, 128):
        row = {}
        for name, k, n in M3_GEMMS:
            ws, b, x = _cold_gemm_operands(m, k, n)
            cell = {}
            for library in ("cublas", "cublaslt"):
                torch.backends.cuda.preferred_blas_library(library)
                for form, fn in forms.items():
                    if form == "gelu epilogue" and name != "up":
                        continue
                    us = graph_ms(lambda: [fn(x, w, b) for w in ws], calls=1) / len(ws) * 1e3
                    cell[f"{form} {library}"] = round(us, 2)
            torch.backends.cuda.preferred_blas_library("cublas")
            row[name] = cell
        say(f"small gemm m={m} us", row)


class _FreshPin:
    """The copy `PinnedStaging` replaced: each batch's array pinned anew (for an A/B in one process)."""

    @staticmethod
    def to_device(values, device):
        return torch.from_numpy(values).pin_memory().to(device, non_blocking=True)


def fp8_all_outputs():
    """Why passages with all three outputs lose more to dense in fp8 than in bf16: wall time of each in fp8
    with each batch's ids pinned anew or staged in reused pinned buffers, and at twice the default token
    budget; the GPU's busy time in a profile of the all-three call, and a cProfile of the calling thread
    (bge-m3 shape). `PROBE_BF16=1` adds bf16."""
    import cProfile
    import io
    import pstats

    from bge_core import Embedder
    from bge_core.engine import packing

    path = W.build_m3(f"{CK}/m3")
    texts = W.passages()
    tokens = W.words(texts) + 2 * len(texts)
    staging = packing.staging
    runs = [("fp8", None, "fresh pin"), ("fp8", None, "staged"), ("fp8", 131072, "staged")]
    if os.environ.get("PROBE_BF16") == "1":
        runs.insert(0, ("bf16", None, "staged"))
    for dtype, budget, copies in runs:
        packing.staging = staging if copies == "staged" else (lambda device: _FreshPin)
        try:
            emb = Embedder(path, device="cuda:0", dtype=dtype, reuse_outputs=False, batch_tokens=budget)
            emb.encode(texts[:256])
            label = f"{dtype} {copies}" + ("" if budget is None else f" budget {budget}")
            for mode, kw in {"dense": {}, "all3": dict(sparse=True, colbert=True)}.items():
                s = wall(lambda: emb.encode(texts, **kw))
                say(f"fp8all3 {label} {mode}", dict(s=round(s, 4), ktok_s=round(tokens / s / 1e3, 1)))
            if dtype == "fp8" and budget is None and copies == "staged":
                profiled(f"{dtype}-all3", lambda: emb.encode(texts, sparse=True, colbert=True))
                profiler = cProfile.Profile()
                profiler.enable()
                emb.encode(texts, sparse=True, colbert=True)
                profiler.disable()
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(22)
                say(f"fp8all3 {label} cprofile", text.getvalue())
        finally:
            packing.staging = staging
        emb = None
        torch.cuda.empty_cache()


def one_text_tokenizing():
    """Tokenizing one query on the GPU host, the Rust backend's batch call against its single-text call, in
    a tight loop and after ~1 ms of waiting for the device (as a query's tokenizing follows the last one's
    wait); µs, p50 of 400."""
    import numpy as np

    from bge_core.engine.tokens import load_tokenizer

    tokenizer = load_tokenizer(W.build_m3(f"{CK}/m3"))
    backend = tokenizer.backend_tokenizer
    query = " ".join(f"w{i}" for i in range(14))
    busy = torch.cuda.CUDAGraph()
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    with torch.cuda.graph(busy):
        for _ in range(6):
            x @ x
    torch.cuda.synchronize()
    calls = {"encode_batch_fast([q])": lambda: backend.encode_batch_fast([query]),
             "encode_batch([q])": lambda: backend.encode_batch([query]),
             "encode(q)": lambda: backend.encode(query)}
    row = {}
    for name, fn in calls.items():
        for pattern in ("tight", "after 1 ms device wait", "after 1 ms sleep"):
            times = []
            for _ in range(400):
                if pattern == "after 1 ms device wait":
                    busy.replay()
                    torch.cuda.synchronize()
                elif pattern == "after 1 ms sleep":
                    time.sleep(0.001)
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            row[f"{name} {pattern}"] = round(float(np.median(times)) * 1e6, 1)
    say("tokenize one query us p50", row)


SECTIONS = {"attn": attention_kernels, "cudnn": cudnn_buckets, "e2e": end_to_end, "host": host_breakdown,
            "epilogue": gelu_epilogue, "compile": compile_gain, "query": query_latency, "evalenc": eval_encoding,
            "calls": merged_calls, "hostprof": host_profile,
            "shortattn": short_attention_kernels, "gemm": gemm_alignment,
            "tiledab": tiled_attention_ab, "timeline": query_timeline,
            "longattn": long_attention_kernels, "eagercost": eager_tiled_cost,
            "l2": l2_prefetch, "l2chain": l2_chain, "smallgemm": small_gemm_forms,
            "attnab": attention_ab, "fp8all3": fp8_all_outputs, "tok1": one_text_tokenizing}


def main():
    parts = sys.argv[1].split(",") if len(sys.argv) > 1 else ["attn", "e2e"]
    for name, section in SECTIONS.items():  # in this order, whatever the order asked for
        if name in parts:
            section()
    with open(f"{OUT}/probe.json", "w") as fh:
        json.dump(LOG, fh, indent=1)


if __name__ == "__main__":
    main()
