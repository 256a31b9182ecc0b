"""mimo's C++ decode kernels compute what the torch paths compute: ``torch.ops.mimo.moe_decode``
the routed experts' sum, ``torch.ops.mimo.linear_decode`` a linear map of a few rows.

It must build here: CI runs on Linux with g++, the toolchain ``torch.compile`` needs anyway.
"""

from __future__ import annotations

import pytest
import torch

from mimo.ops import kernels, moe
from mimo.ops.linear import DECODE_ROWS, linear
from mimo.ops.moe import experts_forward, route
from tests.helpers import split_gate_up


@pytest.fixture(scope="module", autouse=True)
def built():
    assert kernels.load(), "mimo's CPU kernels did not build (see the warning logged by mimo.ops.kernels)"


def _explicit(x, w_gu, w_d, weights, experts):
    out = torch.zeros_like(x)
    for tok in range(x.shape[0]):
        for j in range(experts.shape[1]):
            ex = int(experts[tok, j])
            gate, up = (w_gu[ex] @ x[tok]).chunk(2)
            out[tok] += weights[tok, j] * (w_d[ex] @ (torch.nn.functional.silu(gate) * up))
    return out


def _case(n_tok, e, d, i, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tok, d, generator=g)
    w_gu = torch.randn(e, 2 * i, d, generator=g) * 0.1
    w_d = torch.randn(e, d, i, generator=g) * 0.1
    _, weights, experts = route(x, torch.randn(e, d, generator=g), torch.zeros(e), k)
    return x, w_gu, w_d, weights, experts


@pytest.mark.parametrize(
    "n_tok,e,d,i,k",
    [
        (1, 64, 128, 64, 8),  # a decode step: whole blocks of rows and lanes
        (8, 16, 64, 32, 4),  # a batch: experts shared by several tokens
        (5, 8, 40, 26, 3),  # row counts not multiples of 4, lengths not multiples of 16
        (9, 4, 16, 8, 4),  # more than 4 tokens on one expert: vectors taken 4 at a time
    ],
)
def test_kernel_equals_the_explicit_sum(n_tok, e, d, i, k):
    x, w_gu, w_d, weights, experts = _case(n_tok, e, d, i, k)
    got = torch.ops.mimo.moe_decode(x, *split_gate_up(w_gu), w_d, weights, experts)
    want = _explicit(x, w_gu, w_d, weights, experts)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("n_tok,e,d,i,k", [(1, 64, 128, 64, 8), (5, 8, 40, 26, 3)])
def test_bf16_kernel_sums_bf16_weights_in_fp32(n_tok, e, d, i, k):
    x, w_gu, w_d, weights, experts = (t.bfloat16() if t.is_floating_point() else t for t in _case(n_tok, e, d, i, k))
    got = torch.ops.mimo.moe_decode(x, *split_gate_up(w_gu), w_d, weights.float(), experts)
    want = _explicit(x.float(), w_gu.float(), w_d.float(), weights.float(), experts)  # exact products, fp32 sums
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() <= 2**-7 * want.abs().max()  # one bf16 rounding of the output


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_tokens_experts_do_not_depend_on_the_other_tokens(dtype):
    x, w_gu, w_d, weights, experts = _case(9, 4, 200, 136, 3)
    wg, wu = split_gate_up(w_gu.to(dtype))
    wd = w_d.to(dtype)
    whole = torch.ops.mimo.moe_decode(x, wg, wu, wd, weights, experts)
    alone = torch.cat([torch.ops.mimo.moe_decode(x[t:t + 1].contiguous(), wg, wu, wd, weights[t:t + 1].contiguous(),
                                                 experts[t:t + 1].contiguous()) for t in range(9)])
    assert torch.equal(whole, alone)


def test_experts_forward_takes_the_kernel_for_decode_and_agrees_with_torch(monkeypatch):
    x, w_gu, w_d, weights, experts = _case(2, 16, 64, 32, 4, seed=1)
    calls = []
    real = torch.ops.mimo.moe_decode
    monkeypatch.setattr(moe.torch.ops.mimo, "moe_decode", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        fast = experts_forward(x, *split_gate_up(w_gu), w_d, weights, experts)
        assert calls == [1]
        monkeypatch.setattr(kernels, "_ok", False)  # as on a machine where the kernel cannot build
        plain = experts_forward(x, *split_gate_up(w_gu), w_d, weights, experts)
    assert calls == [1]
    assert (fast - plain).abs().max() < 1e-5


def test_kernel_is_skipped_where_it_does_not_apply():
    x, w_gu, w_d, *_ = _case(1, 4, 16, 8, 2)
    with torch.no_grad():
        assert kernels.ready(x, *split_gate_up(w_gu), w_d)
        assert kernels.ready(x.bfloat16(), *split_gate_up(w_gu.bfloat16()), w_d.bfloat16())
        # activations in another dtype than the weights: the kernels read either and sum in fp32
        assert kernels.ready(x, *split_gate_up(w_gu.bfloat16()), w_d.bfloat16())
        assert kernels.ready(x.bfloat16(), *split_gate_up(w_gu), w_d)
        assert not kernels.ready(x, *split_gate_up(w_gu), w_d.bfloat16())  # the weights must share one dtype
        assert not kernels.ready(x.half(), *split_gate_up(w_gu.half()), w_d.half())
        assert not kernels.ready(x, w_gu[:, :8].transpose(1, 2), w_gu[:, 8:], w_d)
    assert not kernels.ready(x, *split_gate_up(w_gu), w_d)  # autograd: the kernel has no backward


def test_kernel_inside_torch_compile():
    x, w_gu, w_d, weights, experts = _case(1, 16, 64, 32, 4, seed=2)
    step = torch.compile(experts_forward, fullgraph=True)  # no graph break around the custom op
    with torch.no_grad():
        got = step(x, *split_gate_up(w_gu), w_d, weights, experts)
    assert (got - _explicit(x, w_gu, w_d, weights, experts)).abs().max() < 1e-5


def test_bad_expert_ids_are_a_clear_error():
    x, w_gu, w_d, weights, experts = _case(1, 4, 16, 8, 2)
    with pytest.raises(RuntimeError, match="expert id 7 outside"):
        torch.ops.mimo.moe_decode(x, *split_gate_up(w_gu), w_d, weights, torch.tensor([[0, 7]]))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        torch.ops.mimo.moe_decode(x.double(), *split_gate_up(w_gu), w_d, weights, experts)
    with pytest.raises(RuntimeError, match="one dtype"):
        torch.ops.mimo.moe_decode(x, *split_gate_up(w_gu), w_d.bfloat16(), weights, experts)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(kernels, "_ok", None)
    monkeypatch.setenv("MIMO_CPU_KERNELS", "0")
    assert not kernels.load()
    with torch.no_grad():
        assert not kernels.ready(torch.zeros(1, 4))


@pytest.mark.parametrize("rows", list(range(1, DECODE_ROWS + 1)))
@pytest.mark.parametrize("n,k", [(64, 128), (7, 20)])  # whole blocks; a row tail and a lane tail
def test_linear_kernel_equals_matmul(rows, n, k):
    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)
    got = torch.ops.mimo.linear_decode(x, w)
    assert (got - x @ w.T).abs().max() < 1e-4
    xb, wb = x.bfloat16(), w.bfloat16()
    got = torch.ops.mimo.linear_decode(xb, wb)
    want = xb.float() @ wb.float().T
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() <= 2**-7 * want.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_a_rows_product_does_not_depend_on_the_rows_beside_it(dtype, rows):
    # The kernel reads a thread's rows in several stretches at once; each row's sum must still be the one a
    # matrix of that row alone gives, bit for bit (and so the same for any split of the rows, e.g. over ranks).
    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, 200, generator=g), torch.randn(301, 200, generator=g).to(dtype)
    whole = torch.ops.mimo.linear_decode(x, w)
    alone = torch.cat([torch.ops.mimo.linear_decode(x, w[i:i + 1].contiguous()) for i in range(w.shape[0])], dim=1)
    assert torch.equal(whole, alone)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [200, 512])  # with a lane tail; whole vectors
def test_a_rows_product_does_not_depend_on_the_other_rows_of_x(dtype, k):
    # Batch invariance: a speculative verify multiplies 1 + k positions per sequence where plain decode multiplies
    # one, and greedy outputs are identical only if each position's product is the same bits either way.
    g = torch.Generator().manual_seed(k)
    w = torch.randn(301, k, generator=g).to(dtype)
    for m in range(1, DECODE_ROWS + 1):
        x = torch.randn(m, k, generator=g)
        alone = torch.cat([torch.ops.mimo.linear_decode(x[i:i + 1].contiguous(), w) for i in range(m)])
        assert torch.equal(torch.ops.mimo.linear_decode(x, w), alone), f"{m} rows"


def test_router_scores_are_the_sigmoid_of_the_product_and_batch_invariant():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(12, 160, generator=g), torch.randn(8, 160, generator=g)
    got = torch.ops.mimo.router_decode(x, w)
    # Against the exact (float64) scores: torch's own fp32 product sums in another order, 1.1e-6 off them on an
    # AMX Xeon, so it is no reference at this tolerance.
    exact = torch.sigmoid(x.double() @ w.double().T)
    assert got.dtype == torch.float32 and (got.double() - exact).abs().max() < 1e-6
    assert torch.equal(got, torch.cat([torch.ops.mimo.router_decode(x[i:i + 1], w) for i in range(12)]))
    with torch.no_grad():  # route() takes it for a decode step's few tokens
        scores, _, _ = route(x, w, torch.zeros(8), 2)
    assert torch.equal(scores, got)


def test_linear_takes_the_kernel_only_for_a_few_rows_without_autograd(monkeypatch):
    calls = []
    real = torch.ops.mimo.linear_decode
    monkeypatch.setattr(torch.ops.mimo, "linear_decode", lambda *a: calls.append(a[0].shape) or real(*a))
    w = torch.randn(24, 16)
    with torch.no_grad():
        y = linear(torch.randn(2, 3, 16), w)  # [B, T, D] with B * T rows
        assert y.shape == (2, 3, 24) and calls == [(6, 16)]
        linear(torch.randn(DECODE_ROWS + 1, 16), w)  # prefill-sized: MKL's GEMM
    assert len(calls) == 1
    x = torch.randn(1, 16, requires_grad=True)
    linear(x, w).sum().backward()  # autograd: F.linear, with its gradient
    assert len(calls) == 1 and x.grad is not None


def test_a_failed_build_falls_back_to_torch_with_a_warning(monkeypatch, caplog):
    from torch.utils import cpp_extension

    def no_compiler(**kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(kernels, "_ok", None)
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    assert not kernels.load()  # what the engine's runner does before its first step
    x, w_gu, w_d, weights, experts = _case(1, 8, 32, 16, 2, seed=3)
    with torch.no_grad():
        y = experts_forward(x, *split_gate_up(w_gu), w_d, weights, experts)
        assert linear(x, w_gu[0]).shape == (1, 32)
    assert "CPU kernels are unavailable (RuntimeError: no C++ compiler found)" in caplog.text
    assert (y - _explicit(x, w_gu, w_d, weights, experts)).abs().max() < 1e-5


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next_process():
    """torch's build ``lock`` file outlives a process killed mid-build; the next load must not wait on it."""
    import subprocess
    import sys

    if not kernels.load():
        pytest.skip("no C++ toolchain here")
    stale = kernels.build_directory() / "lock"
    stale.touch()
    code = "from mimo.ops import kernels; import sys; sys.exit(0 if kernels.load() else 3)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and "removing" in r.stderr
