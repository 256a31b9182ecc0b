"""mimo's FP8 CPU kernels: ``torch.ops.mimo.dequant_fp8`` is bit-identical to torch's dequantization, and
``linear_decode_fp8`` / ``moe_decode_fp8`` compute the dequantized weights' products within the error of an
fp32 dot product.

Both instruction-set builds are tested: the last test runs this file and test_cpu_kernels.py again with the
kernels built for AVX2 (``MIMO_KERNEL_ISA=avx2``: 8 lanes, 16 registers), so an AVX-512 CI machine checks
the code AVX2-only CPUs run.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mimo.ops import kernels
from mimo.ops.fp8 import quantize_block_fp8, scale_rows

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def built():
    assert kernels.load(), "mimo's CPU kernels did not build (see the warning logged by mimo.ops.kernels)"


def _codes(shape, gen):
    """Random e4m3 codes over the whole finite range (subnormals and zeros included, no NaN)."""
    b = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    b = torch.where((b & 0x7F) == 0x7F, b ^ 1, b)  # NaN codes become 0x7e / 0xfe (+-448)
    return b.view(torch.float8_e4m3fn)


def _grid(rows, cols, gen):
    return torch.rand(rows, cols, generator=gen) * 1e-2 + 1e-3


def _uniform_index(n, block):
    return (torch.arange(n) // block).int()


def _reference(w, scale, row_index, block_k):
    """The definition: (w.float() * scale[row_index][:, k // block_k])."""
    k = w.shape[1]
    return w.float() * scale.float()[row_index.long()][:, torch.arange(k) // block_k]


def _same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    view = torch.int16 if a.dtype == torch.bfloat16 else torch.int32
    assert torch.equal(a.view(view), b.view(view))


# ------------------------------------------------------------------------------------------ conversion and dequant
@pytest.mark.parametrize("block", [256, 3])  # 256: vector loads only; 3 (fewer than any ISA's lanes): the table only
def test_every_finite_code_converts_exactly(block):
    codes = torch.arange(256, dtype=torch.uint8)
    finite = (codes & 0x7F) != 0x7F
    assert int(finite.sum()) == 254
    w = codes.view(torch.float8_e4m3fn).view(1, 256)
    got = torch.ops.mimo.dequant_fp8(w, torch.ones(1, math.ceil(256 / block)), torch.zeros(1, dtype=torch.int32),
                                     block, torch.float32)[0]
    _same_bits(got[finite], codes.view(torch.float8_e4m3fn).float()[finite])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "n,k,block",
    [
        (256, 384, 128),  # whole blocks
        (300, 200, 128),  # ceil blocks, row and column tails
        (100, 90, 16),  # other block sizes
        (70, 200, 64),
    ],
)
def test_dequant_is_bit_identical_to_torch(n, k, block, dtype):
    gen = torch.Generator().manual_seed(n + k + block)
    w, scale = _codes((n, k), gen), _grid(math.ceil(n / block), math.ceil(k / block), gen)
    ri = _uniform_index(n, block)
    got = torch.ops.mimo.dequant_fp8(w, scale, ri, block, dtype)
    _same_bits(got, _reference(w, scale, ri, block).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequant_of_the_per_head_grid_equals_the_loaders(dtype):
    # the released full-attention k_proj: 4 KV heads of 192 rows, 128-row blocks restarting per head
    gen = torch.Generator().manual_seed(5)
    q, scale = quantize_block_fp8(torch.randn(768, 300, generator=gen), n_chunks=4)
    ri = scale_rows(768, scale.shape[0], 128, (4,))
    assert scale.shape[0] == 8 and ri[191] == 1 and ri[192] == 2  # runs of 128 and 64 rows
    got = torch.ops.mimo.dequant_fp8(q, scale, ri, 128, dtype)
    _same_bits(got, _reference(q, scale, ri, 128).to(dtype))


# ------------------------------------------------------------------------------------------ linear_decode_fp8
def _check_products(got, x, w_ref, c=4):
    """|got - x @ w_ref.T| within c * K * 2^-24 * sum |x * w| (an fp32 dot product's error), computed in fp64;
    plus one rounding of the output when it is bf16."""
    want = x.double() @ w_ref.double().T
    bound = c * x.shape[1] * 2.0**-24 * (x.double().abs() @ w_ref.double().abs().T)
    if got.dtype == torch.bfloat16:
        bound = bound + 2.0**-8 * want.abs()
    err = (got.double() - want).abs()
    assert (err <= bound + 1e-30).all(), f"max error / bound {float((err / (bound + 1e-30)).max()):.3g}"


@pytest.mark.parametrize("rows", list(range(1, 9)))
@pytest.mark.parametrize("n,k", [(64, 256), (301, 200), (7, 20)])  # whole blocks; row, lane and block tails
def test_linear_decode_fp8_equals_the_dequantized_product(rows, n, k):
    gen = torch.Generator().manual_seed(rows * 1000 + n)
    w, scale = _codes((n, k), gen), _grid(math.ceil(n / 128), math.ceil(k / 128), gen)
    ri = _uniform_index(n, 128)
    x = torch.randn(rows, k, generator=gen)
    w_ref = _reference(w, scale, ri, 128)
    _check_products(torch.ops.mimo.linear_decode_fp8(x, w, scale, ri, 128), x, w_ref)
    xb = x.bfloat16()
    got = torch.ops.mimo.linear_decode_fp8(xb, w, scale, ri, 128)
    assert got.dtype == torch.bfloat16
    _check_products(got, xb.float(), w_ref)


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_linear_decode_fp8_row_does_not_depend_on_the_rows_beside_it(rows):
    # Rows are read in several stretches at once (decode.h); each row's sum stays bit for bit the one a matrix of
    # that row alone gives, as when the rows are split over tensor-parallel ranks.
    gen = torch.Generator().manual_seed(rows)
    n, k = 301, 200
    w, scale, ri = _codes((n, k), gen), _grid(math.ceil(n / 128), math.ceil(k / 128), gen), _uniform_index(n, 128)
    x = torch.randn(rows, k, generator=gen)
    whole = torch.ops.mimo.linear_decode_fp8(x, w, scale, ri, 128)
    alone = torch.cat([torch.ops.mimo.linear_decode_fp8(x, w[i:i + 1].contiguous(), scale, ri[i:i + 1].contiguous(), 128)
                       for i in range(n)], dim=1)
    _same_bits(whole, alone)


@pytest.mark.parametrize("k,block", [(200, 128), (512, 128), (200, 16)])  # tails; blocks narrower than a chunk
def test_linear_decode_fp8_row_does_not_depend_on_the_other_rows_of_x(k, block):
    # Batch invariance (a verify's positions get the bits plain steps get). Calls of up to 4 rows once took the
    # chunked loads and larger ones did not, which summed the same products in another order.
    gen = torch.Generator().manual_seed(k + block)
    n = 301
    w, scale, ri = _codes((n, k), gen), _grid(math.ceil(n / block), math.ceil(k / block), gen), _uniform_index(n, block)
    for m in range(1, 9):
        x = torch.randn(m, k, generator=gen)
        alone = torch.cat([torch.ops.mimo.linear_decode_fp8(x[i:i + 1].contiguous(), w, scale, ri, block) for i in range(m)])
        _same_bits(torch.ops.mimo.linear_decode_fp8(x, w, scale, ri, block), alone)


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_linear_decode_fp8_per_head_grid_and_small_blocks(rows):
    gen = torch.Generator().manual_seed(rows)
    q, scale = quantize_block_fp8(torch.randn(768, 160, generator=gen), n_chunks=4)
    ri = scale_rows(768, scale.shape[0], 128, (4,))
    x = torch.randn(rows, 160, generator=gen)
    _check_products(torch.ops.mimo.linear_decode_fp8(x, q, scale, ri, 128), x, _reference(q, scale, ri, 128))
    # 16 x 16 blocks: a new scale every 16 columns, a new run every 16 rows
    w, s16 = _codes((90, 100), gen), _grid(6, 7, gen)
    ri16 = _uniform_index(90, 16)
    _check_products(torch.ops.mimo.linear_decode_fp8(x[:, :100].contiguous(), w, s16, ri16, 16), x[:, :100],
                    _reference(w, s16, ri16, 16))


def test_linear_decode_fp8_reads_a_weight_at_an_8_byte_offset():
    # safetensors promise 8-byte alignment only: weights are views into a memory-mapped file
    gen = torch.Generator().manual_seed(3)
    n, k = 37, 203
    w = _codes((n, k), gen)
    buf = torch.zeros(n * k + 72, dtype=torch.uint8)
    start = next(o for o in range(8, 72, 8) if (buf.data_ptr() + o) % 64 == 8)
    view = buf[start:start + n * k].view(torch.float8_e4m3fn).view(n, k)
    view.copy_(w)
    assert view.is_contiguous() and view.data_ptr() % 64 == 8
    scale, ri = _grid(1, 2, gen), _uniform_index(n, 128)
    x = torch.randn(5, k, generator=gen)
    got = torch.ops.mimo.linear_decode_fp8(x, view, scale, ri, 128)
    assert torch.equal(got, torch.ops.mimo.linear_decode_fp8(x, w, scale, ri, 128))
    _same_bits(torch.ops.mimo.dequant_fp8(view, scale, ri, 128, torch.float32), _reference(w, scale, ri, 128))


# ------------------------------------------------------------------------------------------ moe_decode_fp8
def _experts(e, i, d, block, gen):
    wg, wu, wd = _codes((e, i, d), gen), _codes((e, i, d), gen), _codes((e, d, i), gen)
    sg = torch.rand(e, math.ceil(i / block), math.ceil(d / block), generator=gen) * 1e-3
    su = torch.rand(e, math.ceil(i / block), math.ceil(d / block), generator=gen) * 1e-3
    sd = torch.rand(e, math.ceil(d / block), math.ceil(i / block), generator=gen) * 1e-3
    return (wg, wu, wd), (sg, su, sd)


def _moe_reference(x, w, s, block, weights, experts):
    """Per assignment, the expert's dequantized weights in fp64."""
    wg, wu, wd = w
    sg, su, sd = s

    def deq(q, grid):
        return _reference(q, grid, _uniform_index(q.shape[0], block), block).double()

    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(experts.shape[1]):
            e = int(experts[t, j])
            xt = x[t].double()
            h = F.silu(deq(wg[e], sg[e]) @ xt) * (deq(wu[e], su[e]) @ xt)
            out[t] += float(weights[t, j]) * (deq(wd[e], sd[e]) @ h)
    return out


@pytest.mark.parametrize(
    "n_tok,e,d,i,k,block",
    [
        (1, 16, 256, 128, 8, 128),  # a decode step, whole blocks
        (8, 8, 200, 136, 4, 128),  # a batch: experts shared by several tokens; ragged blocks
        (9, 4, 40, 26, 3, 16),  # more than 4 tokens on one expert, small blocks, lane tails
    ],
)
def test_moe_decode_fp8_equals_the_explicit_sum(n_tok, e, d, i, k, block):
    gen = torch.Generator().manual_seed(n_tok * 100 + e)
    w, s = _experts(e, i, d, block, gen)
    x = torch.randn(n_tok, d, generator=gen)
    experts = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(n_tok)])
    experts[:, 0] = 1  # every token on expert 1
    weights = torch.rand(n_tok, k, generator=gen)
    got = torch.ops.mimo.moe_decode_fp8(x, *w, *s, block, block, weights, experts)
    want = _moe_reference(x, w, s, block, weights, experts)
    assert got.shape == x.shape and got.dtype == torch.float32
    assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()
    got_bf16 = torch.ops.mimo.moe_decode_fp8(x.bfloat16(), *w, *s, block, block, weights, experts)
    want_bf16 = _moe_reference(x.bfloat16().float(), w, s, block, weights, experts)
    assert got_bf16.dtype == torch.bfloat16
    assert (got_bf16.double() - want_bf16).abs().max() <= 2**-7 * want_bf16.abs().max()


# ------------------------------------------------------------------------------------------ compile, errors, ready
@pytest.mark.parametrize("block", [128, 16])
def test_moe_decode_fp8_token_does_not_depend_on_the_other_tokens(block):
    # 9 tokens on 4 experts: every expert meets several tokens at once (up to all 9), each token alone meets one
    gen = torch.Generator().manual_seed(block)
    w, s = _experts(4, 136, 200, block, gen)
    x = torch.randn(9, 200, generator=gen)
    experts = torch.stack([torch.randperm(4, generator=gen)[:3] for _ in range(9)])
    weights = torch.rand(9, 3, generator=gen)
    whole = torch.ops.mimo.moe_decode_fp8(x, *w, *s, block, block, weights, experts)
    alone = torch.cat([torch.ops.mimo.moe_decode_fp8(x[t:t + 1].contiguous(), *w, *s, block, block,
                                                     weights[t:t + 1].contiguous(), experts[t:t + 1].contiguous())
                       for t in range(9)])
    _same_bits(whole, alone)


def test_fp8_ops_inside_torch_compile():
    gen = torch.Generator().manual_seed(11)
    n, k = 96, 160
    w, scale, ri = _codes((n, k), gen), _grid(1, 2, gen), _uniform_index(n, 128)
    (wg, wu, wd), (sg, su, sd) = _experts(4, 32, k, 128, gen)
    x = torch.randn(2, k, generator=gen)
    weights, experts = torch.rand(2, 2, generator=gen), torch.tensor([[0, 3], [3, 1]])

    def step(x):
        y = torch.ops.mimo.linear_decode_fp8(x, w, scale, ri, 128)
        z = torch.ops.mimo.moe_decode_fp8(x, wg, wu, wd, sg, su, sd, 128, 128, weights, experts)
        d = torch.ops.mimo.dequant_fp8(w, scale, ri, 128, torch.bfloat16)
        return y, z, d

    with torch.no_grad():
        got = torch.compile(step, fullgraph=True)(x)  # no graph break around the custom ops
        want = step(x)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_bad_inputs_are_clear_errors():
    gen = torch.Generator().manual_seed(0)
    w, scale, ri = _codes((8, 16), gen), _grid(1, 1, gen), _uniform_index(8, 128)
    x = torch.randn(1, 16)
    lin = torch.ops.mimo.linear_decode_fp8
    with pytest.raises(RuntimeError, match="w must be float8_e4m3fn"):
        lin(x, w.float(), scale, ri, 128)
    with pytest.raises(RuntimeError, match="x must be a contiguous float32 or bfloat16"):
        lin(x.double(), w, scale, ri, 128)
    with pytest.raises(RuntimeError, match=r"x \[M, K\] and w \[N, K\]"):
        lin(torch.randn(1, 15), w, scale, ri, 128)
    with pytest.raises(RuntimeError, match=r"scale has shape \[1, 2\], expected \[1, 1\]"):
        lin(x, w, _grid(1, 2, gen), ri, 128)
    with pytest.raises(RuntimeError, match="scale must be a contiguous float32"):
        lin(x, w, scale.double(), ri, 128)
    with pytest.raises(RuntimeError, match="row_index must be a contiguous int32"):
        lin(x, w, scale, ri.long(), 128)
    with pytest.raises(RuntimeError, match=r"row_index\[3\] = 1 outside the scale's 1 rows"):
        lin(x, w, scale, torch.tensor([0, 0, 0, 1, 0, 0, 0, 0], dtype=torch.int32), 128)
    with pytest.raises(RuntimeError, match="block_k must be positive"):
        lin(x, w, scale, ri, 0)
    with pytest.raises(RuntimeError, match="dtype must be float32 or bfloat16"):
        torch.ops.mimo.dequant_fp8(w, scale, ri, 128, torch.float16)
    (wg, wu, wd), (sg, su, sd) = _experts(4, 8, 16, 128, gen)
    moe = torch.ops.mimo.moe_decode_fp8
    weights = torch.ones(1, 2)
    with pytest.raises(RuntimeError, match="expert id 7 outside"):
        moe(x, wg, wu, wd, sg, su, sd, 128, 128, weights, torch.tensor([[0, 7]]))
    with pytest.raises(RuntimeError, match="s_down has shape"):
        moe(x, wg, wu, wd, sg, su, sd[:, :, :0], 128, 128, weights, torch.tensor([[0, 1]]))
    with pytest.raises(RuntimeError, match="w_down must be float8_e4m3fn"):
        moe(x, wg, wu, wd.float(), sg, su, sd, 128, 128, weights, torch.tensor([[0, 1]]))
    with pytest.raises(RuntimeError, match="weights must be"):
        moe(x, wg, wu, wd.transpose(1, 2).contiguous(), sg, su, sd, 128, 128, weights, torch.tensor([[0, 1]]))


def test_ready_fp8_says_which_calls_the_kernels_take():
    w = torch.zeros(8, 16, dtype=torch.float8_e4m3fn)
    x = torch.zeros(1, 16)
    with torch.no_grad():
        assert kernels.ready_fp8(x, w) and kernels.ready_fp8(x.bfloat16(), w, w)
        assert not kernels.ready_fp8(x.half(), w)
        assert not kernels.ready_fp8(x, w.float())  # fp32 weights are ready()'s
        assert not kernels.ready_fp8(x, w.t())  # not contiguous
    assert not kernels.ready_fp8(x, w)  # autograd


# ------------------------------------------------------------------------------------------ the other ISA build
def _has_avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def test_the_build_is_the_one_asked_for():
    built = kernels.built_isa()
    if kernels.kernel_isa() == "avx2":
        assert built.startswith("avx2+f16c") and "lanes=8 registers=16" in built
    elif _has_avx512():
        assert built.startswith("avx512+f16c") and "lanes=16 registers=32" in built


@pytest.mark.slow
@pytest.mark.skipif(kernels.kernel_isa() == "avx2", reason="this run is the AVX2 build already")
@pytest.mark.skipif(" avx2" not in (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""),
                    reason="no AVX2 on this CPU")
def test_the_avx2_build_passes_the_kernel_tests():
    """Builds the kernels with MIMO_KERNEL_ISA=avx2 (once per machine, ~20 s) and runs both kernel test files."""
    env = dict(os.environ, MIMO_KERNEL_ISA="avx2", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    files = ["tests/unit/test_fp8_kernels.py", "tests/unit/test_cpu_kernels.py"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
