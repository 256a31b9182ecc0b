"""The MOPD loss (mimo.posttrain.mopd) against the paper's Eq. 7-9 computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mimo.posttrain.mopd import grpo_advantages, mopd_advantages, mopd_loss, token_log_probs, truncated_is_weights
from tests.helpers import random_model, tiny_config


def _hand_case():
    # Two sequences; the second has one padding position. Chosen so that each clause of Eq. 7-9 matters:
    #   seq 0, t0: ratio 1        kept, teacher above student (positive advantage)
    #   seq 0, t1: ratio e^-1     truncated at eps_low=0.5 (0.37)
    #   seq 0, t2: ratio e^0.5    kept (1.65), teacher below student (negative advantage)
    #   seq 1, t0: ratio e^1      truncated at eps_high=2 (2.72)
    #   seq 1, t1: ratio e^-0.25  kept (0.78)
    #   seq 1, t2: padding
    student = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.75, -3.0]])
    teacher = torch.tensor([[-0.5, -1.0, -1.5], [-1.0, -0.25, -0.1]])
    inference = torch.tensor([[-1.0, -1.0, -1.0], [-2.5, -0.5, -3.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return student, teacher, inference, mask


def test_loss_equals_eq7_by_hand():
    student, teacher, inference, mask = _hand_case()
    orm = torch.tensor([1.0, -0.5])
    alpha = 0.3
    s = student.clone().requires_grad_(True)
    loss, stats = mopd_loss(s, teacher, inference, mask, orm, alpha=alpha, eps_low=0.5, eps_high=2.0)

    # By hand. Seq 0: |y| = 3; t1 truncated (ratio e^-1 < 0.5).
    a00 = (-0.5 - -1.0) + alpha * 1.0  # +0.8
    a02 = (-1.5 - -0.5) + alpha * 1.0  # -0.7
    seq0 = (1.0 * a00 * -1.0 + 0.0 + math.exp(0.5) * a02 * -0.5) / 3
    # Seq 1: |y| = 2 (padding excluded, the truncated t0 still counted); t0 truncated (ratio e > 2).
    a11 = (-0.25 - -0.75) + alpha * -0.5  # +0.35
    seq1 = (0.0 + math.exp(-0.25) * a11 * -0.75) / 2
    expected = -(seq0 + seq1) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    # Gradients flow only through the explicit log π_θ factor: d loss / d logp_t = -w_t Â_t / (|y| B).
    loss.backward()
    expected_grad = torch.tensor([
        [-1.0 * a00 / 3 / 2, 0.0, -math.exp(0.5) * a02 / 3 / 2],
        [0.0, -math.exp(-0.25) * a11 / 2 / 2, 0.0],
    ])
    torch.testing.assert_close(s.grad, expected_grad, rtol=1e-6, atol=1e-7)
    # Advantage sign: gradient descent raises the log-prob where the teacher is above (t0 of seq 0) and
    # lowers it where the teacher is below (t2 of seq 0).
    assert s.grad[0, 0] < 0 < s.grad[0, 2]
    assert stats.truncated == pytest.approx(2 / 5)


def test_stop_gradients_teacher_and_inference_get_none():
    student, teacher, inference, mask = _hand_case()
    s = student.clone().requires_grad_(True)
    t = teacher.clone().requires_grad_(True)
    i = inference.clone().requires_grad_(True)
    loss, _ = mopd_loss(s, t, i, mask)
    loss.backward()
    assert t.grad is None and i.grad is None and s.grad is not None


def test_truncation_mask_bounds_are_inclusive_and_checked():
    logp = torch.log(torch.tensor([0.5, 2.0, 0.49, 2.01, 1.0]))
    w, kept = truncated_is_weights(logp, torch.zeros(5), eps_low=0.5, eps_high=2.0)
    assert kept.tolist() == [True, True, False, False, True]
    torch.testing.assert_close(w, torch.tensor([0.5, 2.0, 0.0, 0.0, 1.0]))
    with pytest.raises(ValueError):
        truncated_is_weights(logp, logp, eps_low=1.5, eps_high=2.0)


def test_per_sequence_normalisation_weighs_sequences_equally():
    # A long and a short sequence with the same per-token term: each contributes its mean, not its sum.
    student = torch.full((2, 4), -1.0)
    teacher = torch.full((2, 4), -0.5)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    loss, _ = mopd_loss(student, teacher, student, mask)
    assert loss.item() == pytest.approx(-(0.5 * -1.0))
    # An empty sequence contributes 0 and still counts in the mean over sequences.
    loss2, _ = mopd_loss(student, teacher, student, torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]))
    assert loss2.item() == pytest.approx(-(0.5 * -1.0) / 2)


def test_teacher_equal_to_student_gives_zero_kl_advantage():
    student, _, inference, mask = _hand_case()
    adv = mopd_advantages(student, student)
    assert torch.count_nonzero(adv) == 0
    s = student.clone().requires_grad_(True)
    loss, stats = mopd_loss(s, student, inference, mask)
    loss.backward()
    assert loss.item() == 0 and stats.reverse_kl == 0 and torch.count_nonzero(s.grad) == 0
    # Only the outcome term remains then.
    adv = mopd_advantages(student, student, torch.tensor([2.0, -1.0]), alpha=0.5)
    torch.testing.assert_close(adv, torch.tensor([[1.0] * 3, [-0.5] * 3]))


def test_grpo_advantages():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    adv = grpo_advantages(r)
    torch.testing.assert_close(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(adv[1]) == 0  # all answers equal: nothing to prefer
    torch.testing.assert_close(grpo_advantages(r, scale=False)[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    with pytest.raises(ValueError):
        grpo_advantages(torch.ones(4))


def test_one_step_moves_student_towards_teacher_on_sampled_tokens():
    torch.manual_seed(0)
    config = tiny_config()
    student = random_model(config, seed=0).train()
    teacher = random_model(config, seed=1).eval()
    prompt_len, answer_len, batch = 4, 8, 4
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, config.vocab_size, (batch, prompt_len), generator=g)
    # On-policy rollouts: sample the answer from the student itself (μ_θ = π_θ here, so w = 1).
    seqs = prompts
    with torch.no_grad():
        for _ in range(answer_len):
            probs = torch.softmax(student(seqs).logits[:, -1].float(), dim=-1)
            seqs = torch.cat([seqs, torch.multinomial(probs, 1, generator=g)], dim=1)
    answer = seqs[:, prompt_len:]
    mask = torch.ones_like(answer)

    def logps(model):
        return token_log_probs(model(seqs[:, :-1]).logits[:, prompt_len - 1:], answer)

    with torch.no_grad():
        lt = logps(teacher)
        before = logps(student)
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    lp = logps(student)
    loss, stats = mopd_loss(lp, lt, before, mask)
    assert stats.truncated == 0 and stats.weight == pytest.approx(1.0)
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = logps(student)
    gap_before = (lt - before).abs().mean().item()
    gap_after = (lt - after).abs().mean().item()
    assert gap_after < gap_before
    # First order: each token's log-prob moved in the direction of its advantage, on the whole.
    assert ((lt - before) * (after - before)).sum() > 0


def test_without_the_distillation_term_the_loss_is_grpo_with_truncated_weights():
    """beta = 0: Â_t = α · Â_ORM alone (no teacher needed), with the same Eq. 8 weights and per-sequence means."""
    torch.manual_seed(0)
    lp = torch.randn(2, 3, requires_grad=True)
    mu = lp.detach() + torch.tensor([[0.1, -0.2, 1.5], [0.0, 0.3, -0.1]])  # one token's ratio outside [0.5, 2]
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    orm = torch.tensor([0.7, -1.2])
    loss, stats = mopd_loss(lp, None, mu, mask, orm, alpha=2.0, beta=0.0)
    w = torch.exp(lp.detach() - mu)
    w = torch.where((w >= 0.5) & (w <= 2.0), w, torch.zeros_like(w))
    by_hand = -(((w * (2.0 * orm[:, None]) * lp * mask).sum(1) / mask.sum(1)).mean())
    assert torch.allclose(loss, by_hand) and stats.reverse_kl is None
    with pytest.raises(ValueError, match="teacher"):
        mopd_loss(lp, None, mu, mask, orm, alpha=2.0)  # beta defaults to 1: a teacher is needed
