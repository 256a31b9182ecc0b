"""Optimizer, learning-rate schedule and gradient clipping for pre-training.

AdamW with betas (0.9, 0.95), eps 1e-8, decoupled weight decay 0.1 — the usual large-model
recipe (DeepSeek-V3 §4.2 uses the same betas and decay).

Weight decay applies to the matrices that multiply activations: attention and MLP projections,
the stacked expert weights, the router weight, MTP ``eh_proj`` and the ``lm_head``. It does not
apply to

* RMSNorm gains: decaying them pulls the scale toward 0, not toward the identity;
* attention sink logits: a per-head scalar whose neutral value (0) has no special meaning;
* the token embedding: a lookup table whose rows are only updated when the token appears, so
  decay would shrink rare tokens' rows at every step without any gradient to balance it.

The rule is therefore "parameters with at least 2 dimensions, except ``embed_tokens``". The
expert-balancing bias is a buffer, not a parameter; it is never seen by the optimizer.

Schedule: linear warmup from ``lr / warmup`` to ``lr`` over ``warmup`` steps, then a cosine decay
to ``min_lr_ratio * lr`` at ``total`` steps (flat after). It is a pure function of the step, so a
resumed run needs only the step (and ``total``) to continue exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

NO_DECAY_NAMES = ("embed_tokens",)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups (decay / no decay) with parameter names, for checkpointing by name."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or any(n in name for n in NO_DECAY_NAMES) else decay).append((name, p))
    return [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8
) -> torch.optim.AdamW:
    # foreach=False: the per-tensor loop (torch's CPU default anyway), stated so results never depend on it.
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, foreach=False)


@dataclass(frozen=True)
class WarmupCosine:
    lr: float
    warmup: int
    total: int
    min_lr_ratio: float = 0.1

    def __call__(self, step: int) -> float:
        """Learning rate of 0-based optimizer step ``step``."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        floor = self.min_lr_ratio * self.lr
        return floor + (self.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def rewarm_factor(step: int, since: int | None, steps: int) -> float:
    """The learning rate's factor at 0-based ``step`` of a run continued at step ``since`` with fresh AdamW moments
    (``mimo train``/``mimo sft --continue-from``): a linear ramp over ``steps`` steps, 1 before and after it and
    for a run that was never continued (``since`` None)."""
    if since is None or step - since >= steps:
        return 1.0
    return (step - since + 1) / steps


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm to ``max_norm`` (<= 0: no clipping); return the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
