"""Mixture-of-experts routing and dispatch (spec §2.6): DeepSeek-V3 "noaux_tc" routing, no shared expert.

Routing in fp32: sigmoid scores; experts *chosen* by score + e_score_correction_bias (the
auxiliary-loss-free balancing bias), optionally within the best ``topk_group`` of ``n_group``
groups (a group's score is the sum of its two best biased scores); experts *weighted* by the
unbiased scores, renormalised over the chosen k and multiplied by routed_scaling_factor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def route(
    x_TD: torch.Tensor,
    gate_ED: torch.Tensor,
    bias_E: torch.Tensor,
    top_k: int,
    n_group: int = 1,
    topk_group: int = 1,
    norm_topk_prob: bool = True,
    scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (scores_TE fp32, weights_TK, experts_TK)."""
    logits_TE = F.linear(x_TD.float(), gate_ED.float())
    scores_TE = logits_TE.sigmoid()
    choice_TE = scores_TE + bias_E.float()
    n_tok, n_exp = choice_TE.shape
    if n_group > 1:
        group_scores = choice_TE.view(n_tok, n_group, n_exp // n_group).topk(2, dim=-1)[0].sum(-1)  # [T, G]
        group_idx = group_scores.topk(topk_group, dim=-1, sorted=False)[1]
        keep_TG = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
        keep_TE = keep_TG[:, :, None].expand(n_tok, n_group, n_exp // n_group).reshape(n_tok, n_exp)
        choice_TE = choice_TE.masked_fill(~keep_TE, float("-inf"))
    experts_TK = choice_TE.topk(top_k, dim=-1, sorted=False)[1]
    weights_TK = scores_TE.gather(1, experts_TK)
    if norm_topk_prob:
        weights_TK = weights_TK / (weights_TK.sum(-1, keepdim=True) + 1e-20)
    return scores_TE, weights_TK * scaling, experts_TK


def experts_forward(
    x_TD: torch.Tensor,
    w_gate_up_EFD: torch.Tensor,  # [E, 2I, D]: rows [0, I) gate, [I, 2I) up
    w_down_EDI: torch.Tensor,  # [E, D, I]
    weights_TK: torch.Tensor,
    experts_TK: torch.Tensor,
) -> torch.Tensor:
    """Sum over each token's chosen experts of weight * down(silu(gate(x)) * up(x))."""
    n_tok, k = experts_TK.shape
    flat_e = experts_TK.reshape(-1)
    # Group the T*K (token, expert) assignments by expert so each expert runs one matmul.
    order = torch.argsort(flat_e, stable=True)
    counts = torch.bincount(flat_e, minlength=w_gate_up_EFD.shape[0]).tolist()
    x_sorted = x_TD[order // k]
    w_sorted = weights_TK.reshape(-1)[order]
    parts, start = [], 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        gate, up = F.linear(x_sorted[start : start + c], w_gate_up_EFD[e]).chunk(2, dim=-1)
        parts.append(F.linear(F.silu(gate) * up, w_down_EDI[e]))
        start += c
    y_sorted = torch.cat(parts) * w_sorted[:, None].to(x_TD.dtype)
    # Undo the sort and add each token's k contributions: a gather and a sum, no scatter-add.
    return y_sorted[torch.argsort(order)].view(n_tok, k, -1).sum(1)
