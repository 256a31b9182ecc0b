"""``torch.ops.mimo.attention_decode`` computes what the explicit fp32 reference computes: grouped KV heads, the
positions' mask (empty slots, the causal rule, the sliding window), sinks; inside torch.compile too."""

from __future__ import annotations

import pytest
import torch

from mimo.ops import kernels
from mimo.ops.attention import Visibility, attention, attention_reference


@pytest.fixture(scope="module", autouse=True)
def built():
    assert kernels.load(), "mimo's CPU kernels did not build (see the warning logged by mimo.ops.kernels)"


def _case(b, hq, hkv, t, s, d, dv, window, sinks, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, hq, d, generator=g).to(dtype).transpose(1, 2)  # as the layer hands it: transposed
    k = torch.randn(b, hkv, s, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, s, dv, generator=g).to(dtype)
    k_pos = torch.stack([torch.randperm(s, generator=g) for _ in range(b)])  # a ring buffer's order
    k_pos[:, :3] = -1  # empty slots
    q_pos = torch.stack([torch.arange(s - t, s) for _ in range(b)])
    q_pos[0, -1] = -1  # a padded verify row
    sink = torch.randn(hq, generator=g) if sinks else None
    return q, k, v, Visibility(q_pos, k_pos, window), sink


@pytest.mark.parametrize("b,hq,hkv,t,s,d,dv,window,sinks", [
    (1, 4, 1, 1, 40, 64, 48, None, False), (2, 4, 2, 4, 150, 64, 48, 128, True), (3, 8, 2, 2, 33, 19, 7, 5, True),
    (1, 2, 2, 1, 1, 16, 16, None, True),
])
def test_equals_the_fp32_reference(b, hq, hkv, t, s, d, dv, window, sinks):
    q, k, v, vis, sink = _case(b, hq, hkv, t, s, d, dv, window, sinks, torch.float32)
    with torch.no_grad():
        got = torch.ops.mimo.attention_decode(q, k, v, vis.q_pos, vis.k_pos, window or 0, sink, d**-0.5)
        want = attention_reference(q, k, v, vis, d**-0.5, sink)
    live = vis.mask.any(-1)[:, None, :, None].expand_as(want)  # rows that see a key (the padded one sees none)
    torch.testing.assert_close(got[live], want[live], rtol=1e-5, atol=1e-5)
    dead = got[~live]
    assert torch.equal(dead, torch.zeros_like(dead))


def test_bf16_inputs_sum_in_fp32():
    q, k, v, vis, sink = _case(2, 4, 2, 3, 90, 64, 48, 16, True, torch.bfloat16)
    with torch.no_grad():
        got = torch.ops.mimo.attention_decode(q, k, v, vis.q_pos, vis.k_pos, 16, sink, 0.125)
        want = attention_reference(q.float(), k.float(), v.float(), vis, 0.125, sink).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16
    live = vis.mask.any(-1)[:, None, :, None].expand_as(want)
    torch.testing.assert_close(got[live].float(), want[live].float(), rtol=1e-2, atol=1e-2)


def test_the_grouped_backend_takes_it_for_a_few_queries_without_autograd(monkeypatch):
    q, k, v, vis, sink = _case(2, 4, 2, 2, 60, 32, 32, None, True, torch.float32)
    calls = []
    real = torch.ops.mimo.attention_decode
    monkeypatch.setattr(torch.ops.mimo, "attention_decode", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        fast = attention(q, k, v, vis, 0.2, sink, backend="sdpa")
    assert calls == [1]
    slow = attention(q, k, v, Visibility(vis.q_pos, vis.k_pos, None), 0.2, sink, backend="sdpa")  # grad mode on
    assert calls == [1]
    live = vis.mask.any(-1)[:, None, :, None].expand_as(slow)
    torch.testing.assert_close(fast[live], slow[live].detach(), rtol=1e-5, atol=1e-5)


def test_inside_torch_compile():
    q, k, v, vis, sink = _case(1, 4, 1, 1, 20, 16, 16, 8, True, torch.float32)

    def f(q, k, v, q_pos, k_pos):
        return attention(q, k, v, Visibility(q_pos, k_pos, 8), 0.25, sink, backend="sdpa")

    with torch.no_grad():
        torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, v, vis.q_pos, vis.k_pos),
                                   f(q, k, v, vis.q_pos, vis.k_pos))


def test_bad_shapes_are_a_clear_error():
    q, k, v, vis, sink = _case(1, 4, 2, 1, 10, 16, 16, None, False, torch.float32)
    with pytest.raises(RuntimeError, match="cannot share"):
        torch.ops.mimo.attention_decode(q[:, :3], k, v, vis.q_pos, vis.k_pos, 0, None, 1.0)
    with pytest.raises(RuntimeError, match="k_pos must be int64"):
        torch.ops.mimo.attention_decode(q, k, v, vis.q_pos, vis.k_pos[:, :5], 0, None, 1.0)
    with pytest.raises(RuntimeError, match="all be float32 or all bfloat16"):
        torch.ops.mimo.attention_decode(q, k.double(), v, vis.q_pos, vis.k_pos, 0, None, 1.0)
