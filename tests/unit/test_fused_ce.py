"""The blockwise linear cross-entropy equals the plain one (logits, then F.cross_entropy), gradients included."""

import pytest
import torch
import torch.nn.functional as F

from mimo.training import fused_ce
from mimo.training.fused_ce import IGNORE, linear_cross_entropy


def plain(h, w, t):
    logits = F.linear(h, w).float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1), ignore_index=IGNORE)
    kept = t != IGNORE
    return loss, (logits.argmax(-1) == t)[kept].float().mean()


def run(fn, h0, w0, t, autocast):
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, acc = fn(h, w, t)
    (3.0 * loss).backward()  # the incoming gradient is not 1
    return loss.detach(), acc, h.grad, w.grad


@pytest.mark.parametrize("autocast", [False, True])
def test_loss_accuracy_and_gradients_equal_the_plain_computation(monkeypatch, autocast):
    monkeypatch.setattr(fused_ce, "BLOCK_BYTES", 64 * 4 * 1000)  # 64-row blocks: 700 rows span several, one partial
    torch.manual_seed(0)
    h0, w0 = torch.randn(2, 350, 48), torch.randn(1000, 48) * 0.1
    t = torch.randint(0, 1000, (2, 350))
    t[0, :90] = IGNORE  # a whole block and part of the next are out of the loss
    t[1, 5] = int(F.linear(h0[1, 5], w0).argmax())  # at least one right answer
    ref, got = run(plain, h0, w0, t, autocast), run(linear_cross_entropy, h0, w0, t, autocast)
    assert got[1] == ref[1] and got[1] > 0
    if autocast:  # bf16 products, rounded per block here and once there: both ~0.2% from an fp64 reference
        torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
        for a, b in zip(got[2:], ref[2:]):
            assert float((a - b).norm() / b.norm()) < 1e-2
    else:
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not got[2][0, :90].any()  # ignored rows get no gradient


def test_all_targets_ignored_gives_zero_loss_with_the_graph_intact():
    h, w = torch.randn(4, 8, requires_grad=True), torch.randn(16, 8, requires_grad=True)
    loss, acc = linear_cross_entropy(h, w, torch.full((4,), IGNORE))
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(acc) == 0.0 and not h.grad.any() and not w.grad.any()


def test_without_grad_it_computes_the_loss_only():
    torch.manual_seed(1)
    h, w, t = torch.randn(30, 8), torch.randn(16, 8), torch.randint(0, 16, (30,))
    with torch.no_grad():
        loss, acc = linear_cross_entropy(h, w, t)
    ref_loss, ref_acc = plain(h, w, t)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(acc, ref_acc)
    assert not loss.requires_grad


def test_a_frozen_weight_gets_no_gradient_and_the_hidden_states_do():
    torch.manual_seed(2)
    h, w, t = torch.randn(30, 8, requires_grad=True), torch.randn(16, 8), torch.randint(0, 16, (30,))
    linear_cross_entropy(h, w, t)[0].backward()
    h2 = h.detach().clone().requires_grad_()
    plain(h2, w, t)[0].backward()
    torch.testing.assert_close(h.grad, h2.grad)


def test_mismatched_rows_and_targets_are_refused():
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(torch.randn(5, 8), torch.randn(16, 8), torch.zeros(4, dtype=torch.long))
