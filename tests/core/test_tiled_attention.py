"""Where the tiled attention kernel is used (engine/tiled_attention.py); its outputs are checked
against the flash kernel on a GPU (tests/gpu)."""

from __future__ import annotations

import torch

from bge_core.engine import attention, tiled_attention
from bge_core.engine.tiled_attention import tiled_attention_fits


def test_taken_on_cuda_for_graphs_and_large_batches_of_any_length_unless_switched_off(monkeypatch):
    q = torch.zeros(4, 2, 64, dtype=torch.float16)
    assert not tiled_attention_fits(q, q, 16, causal=False)  # CPU tensors
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(tiled_attention, "triton", object())
    assert not tiled_attention_fits(q, q, 16, causal=False)  # a small eager batch: launches cost more
    big = torch.zeros(tiled_attention.EAGER_TOKENS, 2, 64, dtype=torch.float16)
    assert tiled_attention_fits(big, big, 16, causal=False)
    with tiled_attention.for_graph():
        assert tiled_attention_fits(q, q, 16, causal=False)  # a forward for a graph
    assert not tiled_attention_fits(q, q, 16, causal=False)
    assert tiled_attention_fits(big, big, 8190, causal=False)  # long documents too
    assert not tiled_attention_fits(big, big, 0, causal=False)
    assert not tiled_attention_fits(q, q, 16, causal=True)
    assert not tiled_attention_fits(q.float(), q.float(), 16, causal=False)
    assert not tiled_attention_fits(q, q[:, :1], 16, causal=False)  # grouped-query attention
    assert not tiled_attention_fits(torch.zeros(4, 2, 48, dtype=torch.float16), q, 16, causal=False)
    monkeypatch.setenv(tiled_attention.ENV, "0")
    assert not tiled_attention_fits(q, q, 16, causal=False)


def test_packed_attention_keeps_sdpa_on_cpu_whatever_the_lengths():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 7, 2, 16).unbind(0)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    out = attention.packed_attention(q, k, v, cu, 4, False, None)
    first = torch.nn.functional.scaled_dot_product_attention(*(x[:3].transpose(0, 1) for x in (q, k, v)))
    torch.testing.assert_close(out[:3], first.transpose(0, 1))


def test_a_kernel_that_cannot_be_built_falls_back_to_flash_for_good(monkeypatch):
    """If Triton fails to build or run the kernel, the call gets flash's result and later calls go
    straight to flash."""
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no compiler here")

    flash_out = torch.ones(8, 2, 64)
    monkeypatch.setattr(tiled_attention, "_failed", False)
    monkeypatch.setattr(attention, "tiled_attention", broken)
    monkeypatch.setattr(attention, "compiling_allowed", lambda: True)
    monkeypatch.setattr(attention, "tiled_attention_fits", lambda *a: not tiled_attention._failed)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(torch.ops.aten, "_flash_attention_forward", lambda *a, **k: (flash_out,), raising=False)
    q = torch.zeros(8, 2, 64, dtype=torch.float16)
    cu = torch.tensor([0, 8], dtype=torch.int32)
    assert attention.packed_attention(q, q, q, cu, 8, False, None) is flash_out
    assert attention.packed_attention(q, q, q, cu, 8, False, None) is flash_out
    assert calls == [1] and tiled_attention._failed


def test_not_used_before_kernels_may_be_compiled(monkeypatch):
    """A one-shot job (no warm-up) keeps flash: the kernel would be built in the middle of its call."""
    calls = []
    flash_out = torch.ones(8, 2, 64)
    monkeypatch.setattr(attention, "tiled_attention", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(attention, "tiled_attention_fits", lambda *a: True)
    monkeypatch.setattr(attention, "compiling_allowed", lambda: False)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(torch.ops.aten, "_flash_attention_forward", lambda *a, **k: (flash_out,), raising=False)
    q = torch.zeros(8, 2, 64, dtype=torch.float16)
    assert attention.packed_attention(q, q, q, torch.tensor([0, 8], dtype=torch.int32), 8, False, None) is flash_out
    assert not calls


def test_tma_only_for_aligned_rows_on_nvidia_hopper_or_later(monkeypatch):
    """Keys and values are read by TMA only where rows start at 16-byte boundaries, and only on an NVIDIA
    GPU of compute capability 9 or more (ROCm reports its own architectures as capabilities)."""
    qkv = torch.zeros(40, 3, 2, 64, dtype=torch.float16)
    assert tiled_attention._tma_aligned(qkv.unbind(1)[1])  # a view of one QKV projection, as the engine has
    assert not tiled_attention._tma_aligned(torch.zeros(40, 2, 65, dtype=torch.float16)[..., 1:])
    assert not tiled_attention._tma_aligned(torch.zeros(40, 3, dtype=torch.float16)[:, :1])
    has_tma = tiled_attention._has_tma.__wrapped__
    monkeypatch.setattr(tiled_attention, "TensorDescriptor", object)
    for capability, hip, expected in [((9, 0), None, True), ((10, 0), None, True), ((8, 0), None, False),
                                      ((9, 4), "6.2", False)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        monkeypatch.setattr(torch.version, "hip", hip)
        assert has_tma(torch.device("cuda:0")) is expected
    monkeypatch.setattr(tiled_attention, "TensorDescriptor", None)
    assert not has_tma(torch.device("cuda:0"))
