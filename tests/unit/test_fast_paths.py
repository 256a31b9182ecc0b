"""The inference fast paths compute the same function as the plain ones.

Attention backends (reference / grouped / sdpa, short and long chunks), grouped-matmul experts
vs one matmul pair per expert, fused q/k/v and gate/up projections vs separate ones, and the
fused fp32 RMSNorm vs the written-out formula.
"""

from __future__ import annotations

import pytest
import torch

from mimo.checkpoint import MiMoForCausalLM
from mimo.ops import moe
from mimo.ops.attention import QUERY_BLOCK, SHORT_QUERY, Visibility, attention
from mimo.ops.moe import experts_forward, route
from mimo.ops.norm import rms_norm
from tests.helpers import random_model, split_gate_up


def _qkv(b, hq, hkv, t, s, d, dv, g):
    q = torch.randn(b, hq, t, d, generator=g)
    k = torch.randn(b, hkv, s, d, generator=g)
    v = torch.randn(b, hkv, s, dv, generator=g)
    return q, k, v


@pytest.mark.parametrize("t", [1, 4, SHORT_QUERY + 7])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("with_sinks", [False, True])
def test_attention_backends_agree(t, window, with_sinks):
    g = torch.Generator().manual_seed(t)
    b, hq, hkv, s, d, dv = 3, 8, 2, 40, 24, 16
    q, k, v = _qkv(b, hq, hkv, t, s, d, dv, g)
    q_pos = torch.arange(s - t, s).expand(b, t).clone()
    q_pos[1, : t // 2] = -1  # padding queries
    k_pos = torch.arange(s).expand(b, s).clone()
    k_pos[2, ::3] = -1  # empty ring slots
    sinks = torch.randn(hq, generator=g) * 2 if with_sinks else None
    vis = Visibility(q_pos, k_pos, window)
    ref = attention(q, k, v, vis, 0.2, sinks, "reference")
    for backend in ("grouped", "sdpa"):
        out = attention(q, k, v, vis, 0.2, sinks, backend)
        live = q_pos >= 0  # padding rows are never read
        assert (out - ref).transpose(1, 2)[live].abs().max() < 1e-5, backend


@pytest.mark.parametrize("window", [None, 37])
def test_long_chunks_attend_in_query_blocks_with_the_same_result(window):
    g = torch.Generator().manual_seed(1)
    b, hq, hkv, t, d, dv = 2, 4, 2, 300, 16, 8
    s = t + 60  # 60 older cached keys, stored out of position order like a ring
    q, k, v = _qkv(b, hq, hkv, t, s, d, dv, g)
    q_pos = (60 + torch.arange(t)).expand(b, t).clone()
    q_pos[1, :40] = -1  # left padding in row 1
    k_pos = torch.cat([torch.randperm(60, generator=g), 60 + torch.arange(t)]).expand(b, s).clone()
    vis = Visibility(q_pos, k_pos, window)
    blocks = vis.blocks(torch.float32, QUERY_BLOCK)
    assert blocks is not None and sum(len(c) for _, _, c, _ in blocks) < 3 * s  # keys really are skipped
    sinks = torch.randn(hq, generator=g)
    ref = attention(q, k, v, vis, 0.25, sinks, "reference")
    out = attention(q, k, v, vis, 0.25, sinks, "sdpa")
    live = q_pos >= 0
    assert (out - ref).transpose(1, 2)[live].abs().max() < 1e-5


def test_unknown_backend_is_a_clear_error():
    model = random_model()
    with pytest.raises(ValueError, match="unknown attention backend"):
        model.set_attention_backend("flash")


@pytest.mark.parametrize("n_tok", [1, 3, 40])
def test_grouped_experts_equal_per_expert_loop(n_tok):
    g = torch.Generator().manual_seed(n_tok)
    e, d, i, k = 16, 32, 24, 4
    x = torch.randn(n_tok, d, generator=g)
    w_gu = torch.randn(e, 2 * i, d, generator=g) * 0.1
    w_d = torch.randn(e, d, i, generator=g) * 0.1
    _, weights, experts = route(x, torch.randn(e, d, generator=g), torch.zeros(e), k)
    with torch.no_grad():
        fast = experts_forward(x, *split_gate_up(w_gu), w_d, weights, experts)
    with torch.enable_grad():
        loop = experts_forward(x, *split_gate_up(w_gu), w_d, weights, experts)  # autograd takes the per-expert loop
    explicit = torch.zeros(n_tok, d)
    for tok in range(n_tok):
        for j in range(k):
            ex = int(experts[tok, j])
            gate, up = (w_gu[ex] @ x[tok]).chunk(2)
            explicit[tok] += weights[tok, j] * (w_d[ex] @ (torch.nn.functional.silu(gate) * up))
    assert (fast - explicit).abs().max() < 1e-5
    assert (loop - explicit).abs().max() < 1e-5


def test_grouped_matmul_is_used_for_dense_assignments(monkeypatch):
    calls = []
    real = torch._grouped_mm
    monkeypatch.setattr(torch, "_grouped_mm", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x, w_gu, w_d = torch.randn(8, 16), torch.randn(8, 24, 16), torch.randn(8, 16, 12)
    _, weights, experts = route(x, torch.randn(8, 16), torch.zeros(8), 2)
    with torch.no_grad():
        experts_forward(x, *split_gate_up(w_gu), w_d, weights, experts)
    assert calls and moe._GROUPED


def test_fused_projections_compute_the_same_and_keep_training_and_saving_intact(tmp_path):
    model = random_model()
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    keys = set(model.state_dict())
    with torch.no_grad():
        before = model(ids).logits
    # An inference transform: a model whose weights require grad is refused (it would train nothing).
    with pytest.raises(RuntimeError, match="requires_grad_\\(False\\)"):
        model.fuse_projections()
    model.requires_grad_(False)
    model.fuse_projections()
    attn = model.model.layers[0].self_attn
    assert attn.qkv is not None and attn.qkv.usable()  # grad mode on, but no weight needs a gradient
    after = model(ids).logits
    assert (after - before).abs().max() < 1e-5
    assert set(model.state_dict()) == keys
    # training a fused model raises instead of silently dropping q/k/v and gate/up gradients ...
    model.requires_grad_(True)
    with pytest.raises(RuntimeError, match="unfuse_projections"):
        model(ids)
    # ... and once unfused, training reaches the separate parameters
    model.unfuse_projections()
    assert attn.qkv is None
    model.zero_grad()
    model(ids).logits.sum().backward()
    assert attn.q_proj.weight.grad is not None and attn.q_proj.weight.grad.abs().sum() > 0
    # an in-place update through a parameter is seen by the fused weight (they share memory)
    model.requires_grad_(False)
    model.fuse_projections()
    with torch.no_grad():
        attn.v_proj.weight.mul_(2)
        doubled = model(ids).logits
        model2 = random_model()
        model2.model.layers[0].self_attn.v_proj.weight.mul_(2)
        assert (doubled - model2(ids).logits).abs().max() < 1e-5
    # views of one fused tensor still save as separate tensors, and reload equal
    model.save_pretrained(tmp_path)
    again = MiMoForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert (again(ids).logits - doubled).abs().max() < 1e-5
    # a replaced weight makes the fused copy stale: the separate projection is used again
    with torch.no_grad():
        attn.k_proj.weight = torch.nn.Parameter(attn.k_proj.weight.clone(), requires_grad=False)
        assert not attn.qkv.usable()
        assert (model(ids).logits - doubled).abs().max() < 1e-5


def test_fp32_rms_norm_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(4, 7, 64, generator=g) * 3, torch.randn(64, generator=g)
    formula = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    assert (rms_norm(x, w, 1e-6) - formula).abs().max() < 1e-5
