"""Training losses: next-token cross-entropy, the MTP losses and the sequence-wise MoE balance loss.

Batch layout (shared with :mod:`mimo.training.data`). A packed row holds ``T + extra`` tokens with
``extra = 1 + D`` for ``D`` trained MTP depths. The trunk reads ``row[:, :T]``; its position i is
trained on ``t[i+1]``. MTP depth k (paper §2.3.2) reads ``t[i+k]`` (through
:meth:`CausalLM.mtp_chain` over :func:`mimo.model.mtp_shift`, the one place that encodes the shift) and the chain state
``h^(k-1)[i]``, and is trained on ``t[i+k+1]`` — so every one of the T rows has a target at every
depth, which is why rows carry ``1 + D`` extra tokens.

Total loss::

    L = CE_main + sum_k w_k * CE_mtp_k + alpha * sum_over_MoE_layers L_bal

MTP weights. The paper pre-trains one MTP head with weight 0.3 (0.1 in later stages) and only
replicates it to three heads in post-training (paper §3.2). mimo-nano trains its three blocks from
scratch together, so each depth gets the Stage-1 weight, ``(0.3, 0.3, 0.3)`` by default. Each
block's own weights see only their own loss, and Adam is invariant to a loss's scale, so the
weights mostly decide how hard the MTP losses pull on the shared trunk, embedding and lm_head.

Balance loss (DeepSeek-V3 §2.1.2, "complementary sequence-wise auxiliary loss"), per MoE layer
and per sequence of T tokens, with E experts and top-K routing::

    f_e = E / (K T) * #{t : e in topK(t)}          # fraction of routed slots, 1 when uniform
    P_e = 1/T * sum_t s_te / sum_e' s_te'           # sigmoid scores normalised per token
    L_bal = sum_e f_e P_e                           # 1 when perfectly balanced

averaged over the sequences of the batch and summed over MoE layers (the coefficient is per
layer, as in the papers). The paper uses alpha = 1e-5 at 309B; the default here is 1e-4
(DeepSeek-V3's value), a light touch beside the bias update of :mod:`mimo.training.balance`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mimo.model import CausalLM
from mimo.training.fused_ce import IGNORE, linear_cross_entropy


@dataclass(frozen=True)
class LossConfig:
    mtp_weights: tuple[float, ...] = (0.3, 0.3, 0.3)  # one per trained MTP depth (1, 2, ...)
    aux_coef: float = 1e-4  # sequence-wise balance loss coefficient (per MoE layer)

    @property
    def depths(self) -> int:
        return len(self.mtp_weights)

    @property
    def extra(self) -> int:
        """Tokens a packed row carries beyond the T inputs: the next token plus one per MTP depth."""
        return 1 + self.depths


def targets(batch: torch.Tensor, seq_len: int, depth: int) -> torch.Tensor:
    """Targets of head ``depth`` (0 = main) at rows 0..T-1: ``t[i + depth + 1]``, shape [B, T]."""
    if batch.shape[1] < seq_len + depth + 1:
        raise ValueError(f"a row of {batch.shape[1]} tokens has no depth-{depth} targets for {seq_len} inputs")
    return batch[:, depth + 1 : depth + 1 + seq_len]


def balance_loss(scores_TE: torch.Tensor, experts_TK: torch.Tensor, batch: int) -> torch.Tensor:
    """Sequence-wise balance loss of one MoE layer, averaged over the ``batch`` sequences (see the docstring)."""
    n_tok, n_exp = scores_TE.shape
    k = experts_TK.shape[1]
    seq = n_tok // batch
    s_BTE = scores_TE.float().view(batch, seq, n_exp)
    p_BE = (s_BTE / s_BTE.sum(-1, keepdim=True)).mean(1)  # [B, E]
    # Counts carry no gradient (top-k is a choice); the gradient flows through P only, as in DeepSeek-V3.
    onehot = torch.zeros(batch, seq * k, n_exp, device=scores_TE.device)
    onehot.scatter_(2, experts_TK.reshape(batch, seq * k, 1), 1.0)
    f_BE = onehot.sum(1) * (n_exp / (k * seq))  # [B, E]
    return (f_BE * p_BE).sum(-1).mean()


def _ce_acc(model: CausalLM, hidden: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy of the head's logits against ``tgt``, accuracy); fused a block of rows at a time
    (:mod:`mimo.training.fused_ce`) where the logits are exactly ``hidden @ lm_head.weight.T``: the model's own
    ``compute_logits`` (not one replaced on the instance or in a subclass) and a head not held in FP8."""
    own = "compute_logits" not in vars(model) and type(model).compute_logits is CausalLM.compute_logits
    if own and not model.lm_head.is_fp8:
        return linear_cross_entropy(hidden, model.lm_head.weight, tgt)
    logits = model.compute_logits(hidden).float()  # [B, T, V]; fp32 log-softmax whatever the autocast dtype
    kept = tgt != IGNORE
    if not bool(kept.any()):  # nothing to learn at this depth in this batch: zero, with the graph intact
        return logits.sum() * 0.0, torch.zeros((), device=logits.device)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=IGNORE)
    acc = (logits.argmax(-1) == tgt)[kept].float().mean()
    return loss, acc.detach()


def _masked(tgt: torch.Tensor, loss_mask: torch.Tensor | None, seq_len: int, depth: int) -> torch.Tensor:
    """``tgt`` with the targets outside ``loss_mask`` (a mask over the row's tokens) set to :data:`IGNORE`."""
    if loss_mask is None:
        return tgt
    return tgt.masked_fill(~loss_mask[:, depth + 1 : depth + 1 + seq_len], IGNORE)


def compute_losses(model: CausalLM, batch: torch.Tensor, cfg: LossConfig,
                   loss_mask: torch.Tensor | None = None) -> dict:
    """Forward one packed batch [B, T + extra] and return the total loss and its parts.

    ``loss_mask`` [B, T + extra] (bool, SFT): a target token counts (for the main head and every MTP depth)
    only where the mask is true; losses are means over the counted targets.

    Keys: ``loss`` (tensor with grad), ``main_loss``, ``acc``, ``mtp_loss_k``/``mtp_acc_k`` for
    k = 1..D, ``balance_loss`` (floats), and ``expert_counts`` [n_MoE_layers, E] (int64, the
    tokens routed to each expert in this batch, for :func:`mimo.training.balance.update_expert_bias`).
    """
    if batch.ndim != 2:
        raise ValueError(f"batch must be [batch, seq_len + extra], got shape {tuple(batch.shape)}")
    n_mtp = model.config.num_mtp_layers
    if cfg.depths > n_mtp:
        raise ValueError(f"{cfg.depths} MTP loss weights given but the model has {n_mtp} MTP block(s)")
    b = batch.shape[0]
    seq_len = batch.shape[1] - cfg.extra
    if seq_len < 1:
        raise ValueError(f"rows of {batch.shape[1]} tokens leave no inputs after {cfg.extra} target tokens")
    if loss_mask is not None and loss_mask.shape != batch.shape:  # before the forward, not after it
        raise ValueError(f"loss_mask must have the batch's shape {tuple(batch.shape)}, got {tuple(loss_mask.shape)}")
    positions = torch.arange(seq_len, device=batch.device).expand(b, -1)
    router_out: list = []
    hidden = model.trunk(batch[:, :seq_len], positions, router_out=router_out)
    main_loss, main_acc = _ce_acc(model, hidden, _masked(targets(batch, seq_len, 0), loss_mask, seq_len, 0))
    out: dict = {"main_loss": float(main_loss.detach()), "acc": float(main_acc)}
    total = main_loss

    # h^(0) is the trunk's output after model.norm; every depth has all T rows (the batch carries the extra tokens)
    for depth, chain in enumerate(model.mtp_chain(batch, hidden, cfg.depths, positions), 1):
        loss_k, acc_k = _ce_acc(model, chain, _masked(targets(batch, seq_len, depth), loss_mask, seq_len, depth))
        out[f"mtp_loss_{depth}"], out[f"mtp_acc_{depth}"] = float(loss_k.detach()), float(acc_k)
        total = total + cfg.mtp_weights[depth - 1] * loss_k

    n_exp = model.config.n_routed_experts
    bal = torch.zeros((), device=batch.device)
    counts = []
    for scores_TE, experts_TK in router_out:
        if cfg.aux_coef:
            bal = bal + balance_loss(scores_TE, experts_TK, b)
        counts.append(torch.bincount(experts_TK.reshape(-1), minlength=n_exp))
    if cfg.aux_coef and router_out:
        total = total + cfg.aux_coef * bal
    out["balance_loss"] = float(bal.detach()) / max(1, len(router_out))  # per layer: 1.0 when balanced
    out["expert_counts"] = torch.stack(counts) if counts else torch.zeros(0, n_exp, dtype=torch.long, device=batch.device)
    out["loss"] = total
    return out
