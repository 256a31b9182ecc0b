"""Cross-entropy of ``hidden @ weight.T`` computed a block of rows at a time, its gradient included.

Why: the plain way materialises the logits of the whole batch, several times over (the matmul's output, its
fp32 copy, the log-softmax, the gradient and its bf16 copy), once per head: for mimo-nano's pre-training batch
(8,192 rows, 4,096-token vocabulary, four heads) that is ~20 tensors of 67-134 MB a step. Tensors that large
are above glibc's largest mmap threshold (32 MiB, :mod:`mimo.utils.malloc`), so each one is fresh pages from
the kernel, faulted in and zeroed every step, and none of them fits a cache. Here each block of rows is
multiplied, soft-maxed and turned into its gradient while it is in cache, and only the loss, the accuracy
and the two small gradients (of ``hidden``, [N, H], and of ``weight``, [V, H]) survive the forward; the
backward scales them by the incoming gradient (a scalar). Same arithmetic as the plain way (the logits are
rounded to the compute dtype exactly as autocast's matmul rounds them, the softmax is fp32), so the loss
is the same up to summation order; under bf16 autocast the weight's gradient is each block's bf16 product
summed in fp32 (the plain way rounds the whole product to bf16 once: both are ~0.2% from an fp64 reference,
tests/unit/test_fused_ce.py). The idea is Liger-Kernel's fused linear cross-entropy.

The gradient is computed in the forward, so it costs the backward's matmuls whether or not ``backward``
runs: without grad (evaluation) the blocks compute the loss only.
"""

from __future__ import annotations

import torch

IGNORE = -100  # a target out of the loss (F.cross_entropy's ignore_index)
BLOCK_BYTES = 8 << 20  # fp32 logits per block: in L2/L3, and below glibc's mmap threshold


def _block_rows(vocab: int) -> int:
    return max(64, BLOCK_BYTES // (4 * vocab))


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The matmul's dtype: autocast's where it is on for the weight's device (as ``F.linear`` would run)."""
    kind = weight.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weight.dtype


def _block(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                            torch.Tensor]:
    """(fp32 logits [n, V], logsumexp [n], kept [n] bool, safe targets [n]) of one block."""
    logits = (h @ w.T).float()
    kept = t != IGNORE
    return logits, torch.logsumexp(logits, -1), kept, torch.where(kept, t, 0)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, n_kept: int,
                dtype: torch.dtype, need_h: bool, need_w: bool):
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are explicit below
            return _LinearCrossEntropy._forward(ctx, hidden, weight, target, n_kept, dtype, need_h, need_w)

    @staticmethod
    def _forward(ctx, hidden, weight, target, n_kept, dtype, need_h, need_w):
        w = weight.to(dtype)
        rows = _block_rows(weight.shape[0])
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_h = torch.zeros(hidden.shape, dtype=hidden.dtype, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for s in range(0, hidden.shape[0], rows):
            h = hidden[s : s + rows].to(dtype)
            logits, lse, kept, t = _block(h, w, target[s : s + rows])
            picked = logits.gather(1, t[:, None])[:, 0]
            loss += ((lse - picked) * kept).sum()
            correct += ((logits.argmax(-1) == t) & kept).sum()
            if grad_h is None and grad_w is None:
                continue
            # d(mean CE)/d logits = (softmax - onehot(target)) / n_kept on kept rows, 0 elsewhere
            g = logits.sub_(lse[:, None]).exp_()
            g.scatter_add_(1, t[:, None], torch.full_like(g[:, :1], -1.0))
            g.mul_((kept.float() / max(1, n_kept))[:, None])
            g = g.to(dtype)
            if grad_h is not None:
                grad_h[s : s + rows] = g @ w
            if grad_w is not None:
                grad_w += (g.T @ h).float()
        ctx.save_for_backward(*(x for x in (grad_h, grad_w) if x is not None))
        ctx.need, ctx.weight_dtype = (need_h, need_w), weight.dtype
        ctx.mark_non_differentiable(correct)
        return loss / max(1, n_kept), correct

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_correct):
        saved = iter(ctx.saved_tensors)
        need_h, need_w = ctx.need
        gh = next(saved) * grad_loss if need_h else None
        gw = (next(saved) * grad_loss).to(ctx.weight_dtype) if need_w else None
        return gh, gw, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                         target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy of ``hidden @ weight.T`` against ``target`` over the targets that are not
    :data:`IGNORE`, with its graph; the accuracy over them, detached). ``hidden`` [..., H], ``weight`` [V, H],
    ``target`` [...]. Zero loss and accuracy (graph intact) where every target is ignored."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t = target.reshape(-1)
    if t.shape[0] != h.shape[0]:
        raise ValueError(f"{h.shape[0]} rows of hidden states but {t.shape[0]} targets")
    grad = torch.is_grad_enabled()
    need_h, need_w = grad and hidden.requires_grad, grad and weight.requires_grad
    n_kept = int((t != IGNORE).sum())
    loss, correct = _LinearCrossEntropy.apply(h, weight, t, n_kept, _compute_dtype(weight), need_h, need_w)
    return loss, (correct.float() / max(1, n_kept)).detach()
