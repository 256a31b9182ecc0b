"""The MOPD objective (multi-teacher on-policy distillation, MiMo-V2-Flash paper Sec. 4.4, Eq. 7-9) and
the GRPO outcome advantage, as pure functions over per-token tensors.

Notation (``shared/docs/peers-and-users.md`` §1.6): the student's training policy ``π_θ``, the inference
policy ``μ_θ`` that sampled the rollout (the engine's log-probs, which differ from the trainer's by
kernels, precision and routing), and the teacher ``π_dom`` of the prompt's domain. For a prompt ``x``
and a sampled answer ``y ~ μ_θ``::

    L_MOPD = -E_{x, y~μ_θ} [ (1/|y|) Σ_t  w_t · Â_t · log π_θ(y_t | x, y_<t) ]            (Eq. 7)
    w_t    = sg[π_θ(y_t)/μ_θ(y_t)]  if ε_low <= ratio <= ε_high, else 0                   (Eq. 8)
    Â_t    = sg[log π_dom(y_t) - log π_θ(y_t)] + α · Â_ORM                               (Eq. 9)

``beta`` weighs the distillation term (1 in the paper; 0 leaves the outcome reward alone: GRPO with the same
truncated importance weights, the "RL with outcome rewards only" baseline of the paper's Fig. 6, which needs no
teacher).

Decisions, where the paper leaves a choice:

* ``|y|`` is the number of answer tokens of the sequence (its mask's sum), *including* tokens whose
  weight was truncated to zero: truncation discards a token's contribution, it does not re-weight the
  others. Sequences are then averaged with equal weight (the expectation over ``(x, y)``).
* The only gradient path is the explicit ``log π_θ`` factor: the ratio in ``w_t`` and the ``log π_θ``
  inside ``Â_t`` are detached (``sg``), so the gradient of one token's term is
  ``-(w_t Â_t / |y|) ∇ log π_θ(y_t)`` -- the on-policy reverse-KL gradient, corrected for the
  training/inference mismatch.
* ``Â_ORM`` is one number per sequence (an outcome reward turned into a GRPO advantage by
  :func:`grpo_advantages`), broadcast over that sequence's tokens.
* ``ε_low``/``ε_high``: the paper gives no values; the defaults 0.5 and 2.0 keep tokens whose
  probabilities agree within a factor of two (the truncated-IS papers it cites use bounds of that order).
  The fraction of tokens truncated is returned: a large one means the engine and the trainer disagree.

All log-prob tensors are ``[B, T]`` over the answer positions, aligned with ``mask`` (1 for answer tokens,
0 for padding). Only ``logp_student`` needs a graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "MOPDStats",
    "grpo_advantages",
    "mopd_advantages",
    "mopd_loss",
    "token_log_probs",
    "truncated_is_weights",
]


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[..., tokens]`` in fp32: the log-probs of the tokens a policy sampled.

    ``logits`` ``[B, T, V]`` at the positions that predicted ``tokens`` ``[B, T]``."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def grpo_advantages(rewards: torch.Tensor, *, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's outcome advantage: rewards ``[G, n]`` (G prompts, n answers each) minus their group mean,
    divided by the group's standard deviation when ``scale`` (``scale=False`` is Dr. GRPO's unbiased form).

    A group whose answers all scored the same gets advantage 0 (nothing to prefer). The standard deviation
    is the population one (``unbiased=False``), as GRPO's reference implementation uses.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [groups, answers per group], got shape {tuple(rewards.shape)}")
    r = rewards.float()
    adv = r - r.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (r.std(dim=1, unbiased=False, keepdim=True) + eps)
    return adv


def truncated_is_weights(logp_student: torch.Tensor, logp_inference: torch.Tensor, *, eps_low: float = 0.5,
                         eps_high: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8: ``(w, kept)`` with ``w = sg[π_θ/μ_θ]`` where ``eps_low <= ratio <= eps_high``, else 0."""
    if not 0 <= eps_low <= 1 <= eps_high:
        raise ValueError(f"need 0 <= eps_low <= 1 <= eps_high, got {eps_low}, {eps_high}")
    ratio = torch.exp(logp_student.detach().float() - logp_inference.detach().float())
    kept = (ratio >= eps_low) & (ratio <= eps_high)
    return torch.where(kept, ratio, torch.zeros_like(ratio)), kept


def mopd_advantages(logp_teacher: torch.Tensor | None, logp_student: torch.Tensor,
                    orm_advantages: torch.Tensor | None = None, *, alpha: float = 0.0, beta: float = 1.0) -> torch.Tensor:
    """Eq. 9: ``β · sg[log π_dom - log π_θ] + α · Â_ORM`` per token (β = 1 in the paper); ``orm_advantages`` is
    ``[B]`` (per sequence). ``logp_teacher`` may be None where β is 0."""
    if beta:
        if logp_teacher is None:
            raise ValueError("a teacher's log-probs are needed unless beta (the distillation weight) is 0")
        adv = beta * (logp_teacher.detach().float() - logp_student.detach().float())
    else:
        adv = torch.zeros_like(logp_student, dtype=torch.float32)
    if orm_advantages is not None and alpha:
        if orm_advantages.shape != adv.shape[:1]:
            raise ValueError(f"orm_advantages must be one per sequence {tuple(adv.shape[:1])}, "
                             f"got {tuple(orm_advantages.shape)}")
        adv = adv + alpha * orm_advantages.detach().float().unsqueeze(1)
    return adv


@dataclass(frozen=True)
class MOPDStats:
    """Detached diagnostics of one loss evaluation (means over answer tokens)."""

    reverse_kl: float | None  # mean of log π_θ - log π_dom on the sampled tokens (a reverse-KL estimate); None
    # without a teacher
    advantage: float  # mean Â_t
    truncated: float  # fraction of answer tokens whose IS weight was zeroed
    weight: float  # mean w_t over kept tokens


def mopd_loss(logp_student: torch.Tensor, logp_teacher: torch.Tensor | None, logp_inference: torch.Tensor,
              mask: torch.Tensor, orm_advantages: torch.Tensor | None = None, *, alpha: float = 0.0,
              beta: float = 1.0, eps_low: float = 0.5, eps_high: float = 2.0) -> tuple[torch.Tensor, MOPDStats]:
    """Eq. 7: the MOPD surrogate loss (a scalar to minimise) and its diagnostics.

    ``logp_student`` ``[B, T]`` carries the graph (the trainer's forward on the sampled tokens);
    ``logp_teacher`` and ``logp_inference`` are constants (the domain teacher's forward, the engine's
    recorded log-probs); ``mask`` ``[B, T]`` marks answer tokens. A sequence with no answer tokens
    contributes 0 (and still counts in the mean over sequences). ``beta``: the distillation term's weight (0: no
    teacher; ``logp_teacher`` may then be None).
    """
    given = [t for t in (logp_student, logp_teacher, logp_inference, mask) if t is not None]
    if any(t.shape != mask.shape for t in given):
        raise ValueError("logp_student, logp_teacher, logp_inference and mask must have one shape [B, T], got "
                         f"{[tuple(t.shape) for t in given]}")
    m = mask.to(torch.float32)
    weights, kept = truncated_is_weights(logp_student, logp_inference, eps_low=eps_low, eps_high=eps_high)
    adv = mopd_advantages(logp_teacher, logp_student, orm_advantages, alpha=alpha, beta=beta)
    per_token = weights * adv * logp_student.float() * m
    lengths = m.sum(dim=1)
    per_seq = per_token.sum(dim=1) / lengths.clamp(min=1)
    loss = -per_seq.mean()
    with torch.no_grad():
        n = m.sum().clamp(min=1)
        kept_m = kept.float() * m
        stats = MOPDStats(
            reverse_kl=(float(((logp_student.float() - logp_teacher.float()) * m).sum() / n)
                        if logp_teacher is not None else None),
            advantage=float((adv * m).sum() / n),
            truncated=float(1 - kept_m.sum() / n) if m.sum() > 0 else 0.0,
            weight=float((weights * m).sum() / kept_m.sum().clamp(min=1)),
        )
    return loss, stats
