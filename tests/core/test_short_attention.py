"""Where the one-tile attention kernel is used (engine/short_attention.py); its outputs are checked
against the flash kernel on a GPU (tests/gpu)."""

from __future__ import annotations

import torch

from bge_core.engine import attention, short_attention
from bge_core.engine.short_attention import short_attention_fits


def test_not_taken_off_cuda_for_long_sequences_or_when_switched_off(monkeypatch):
    q = torch.zeros(4, 2, 64, dtype=torch.float16)
    assert not short_attention_fits(q, q, 16, causal=False)  # CPU tensors
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(short_attention, "triton", object())
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert not short_attention_fits(q, q, 16, causal=False)  # a small eager batch: launches cost more
    big = torch.zeros(short_attention.EAGER_TOKENS, 2, 64, dtype=torch.float16)
    assert short_attention_fits(big, big, 16, causal=False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert short_attention_fits(q, q, 16, causal=False)  # captured in a graph
    assert not short_attention_fits(q, q, 129, causal=False)
    assert not short_attention_fits(q, q, 16, causal=True)
    assert not short_attention_fits(q.float(), q.float(), 16, causal=False)
    assert not short_attention_fits(q, q[:, :1], 16, causal=False)  # grouped-query attention
    assert not short_attention_fits(torch.zeros(4, 2, 48, dtype=torch.float16), q, 16, causal=False)
    monkeypatch.setenv(short_attention.ENV, "0")
    assert not short_attention_fits(q, q, 16, causal=False)


def test_packed_attention_keeps_sdpa_on_cpu_whatever_the_lengths():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 7, 2, 16).unbind(0)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    out = attention.packed_attention(q, k, v, cu, 4, False, None)
    first = torch.nn.functional.scaled_dot_product_attention(*(x[:3].transpose(0, 1) for x in (q, k, v)))
    torch.testing.assert_close(out[:3], first.transpose(0, 1))
