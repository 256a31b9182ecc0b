"""``torch.ops.mimo.rms_norm`` computes what mimo's torch RMSNorm computes (fp32; bf16 with its two roundings), and
the model's norm takes it only in eager inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mimo.ops import kernels
from mimo.ops.norm import rms_norm


@pytest.fixture(scope="module", autouse=True)
def built():
    assert kernels.load(), "mimo's CPU kernels did not build (see the warning logged by mimo.ops.kernels)"


def _torch(x, w, eps):
    with torch.enable_grad():  # the torch path (the kernel needs no-grad)
        return rms_norm(x, w, eps).detach()


@pytest.mark.parametrize("shape", [(1, 1, 256), (3, 5, 64), (7, 19), (2, 4096)])
def test_fp32_equals_torch(shape):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(*shape, generator=g) * 3, torch.rand(shape[-1], generator=g) + 0.5
    with torch.no_grad():
        got = torch.ops.mimo.rms_norm(x, w, 1e-6)
    torch.testing.assert_close(got, F.rms_norm(x, (shape[-1],), w, 1e-6), rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(got, _torch(x, w, 1e-6), rtol=2e-6, atol=2e-6)
    with torch.no_grad():  # a bf16 weight under fp32 activations: widened, as the torch path does
        torch.testing.assert_close(torch.ops.mimo.rms_norm(x, w.bfloat16(), 1e-6),
                                   F.rms_norm(x, (shape[-1],), w.bfloat16().float(), 1e-6), rtol=2e-6, atol=2e-6)


def test_bf16_rounds_where_torch_does():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(64, 256, generator=g) * 4).bfloat16()
    w = (torch.rand(256, generator=g) + 0.5).bfloat16()
    with torch.no_grad():
        got = torch.ops.mimo.rms_norm(x, w, 1e-5)
    want = _torch(x, w, 1e-5)
    assert got.dtype == torch.bfloat16
    # the same two roundings; the fp32 scale may differ in its last bit, moving a value by one bf16 step at most
    diff = (got.float() - want.float()).abs()
    assert (diff <= want.float().abs() * 2**-7 + 1e-30).all()
    assert (got == want).float().mean() > 0.99


def test_the_model_norm_takes_it_only_in_eager_inference(monkeypatch):
    x, w = torch.randn(2, 3, 32), torch.ones(32)
    calls = []
    real = torch.ops.mimo.rms_norm
    monkeypatch.setattr(torch.ops.mimo, "rms_norm", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        rms_norm(x, w, 1e-5)
    assert calls == [1]
    rms_norm(x, w, 1e-5)  # grad mode: torch
    with torch.no_grad():
        rms_norm(x.bfloat16(), w, 1e-5)  # an fp32 weight under bf16 x: torch (its output is fp32 there)
        rms_norm(x.transpose(1, 2), torch.ones(3), 1e-5)  # not contiguous: torch
    assert calls == [1]


def test_bad_input_is_a_clear_error():
    with pytest.raises(RuntimeError, match="weight must be"):
        torch.ops.mimo.rms_norm(torch.randn(2, 8), torch.ones(4), 1e-5)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        torch.ops.mimo.rms_norm(torch.randn(2, 8).double(), torch.ones(8).double(), 1e-5)
