"""Mixture-of-experts routing and dispatch (paper §2; DeepSeek-V3 §2.1.2): DeepSeek-V3 "noaux_tc" routing, no shared expert.

Routing in fp32: sigmoid scores; experts *chosen* by score + e_score_correction_bias (the
auxiliary-loss-free balancing bias), optionally within the best ``topk_group`` of ``n_group``
groups (a group's score is the sum of its two best biased scores); experts *weighted* by the
unbiased scores, renormalised over the chosen k and multiplied by routed_scaling_factor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mimo.ops import kernels
from mimo.ops.fp8 import BLOCK, FP8, dequantize, scale_rows
from mimo.ops.linear import EXACT_ROWS, gemm_dtype, kernel_rows


def route(
    x_TD: torch.Tensor,
    gate_ED: torch.Tensor,
    bias_E: torch.Tensor,
    top_k: int,
    n_group: int = 1,
    topk_group: int = 1,
    norm_topk_prob: bool = True,
    scaling: float = 1.0,
    experts_TK: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (scores_TE fp32, weights_TK, experts_TK).

    ``experts_TK`` given: those experts, not the top-k of the scores (rollout routing replay, R3: a trainer
    replays the experts the inference engine chose). Their weights are still this forward's scores, so the
    router keeps its gradient; only the discrete choice is replayed."""
    x_TD, gate_ED = x_TD.float(), gate_ED.float()
    if 0 < x_TD.shape[0] <= EXACT_ROWS and kernels.ready(x_TD, gate_ED):
        # the decode kernel sums each token's logits the same way however many tokens the step has (a GEMM's
        # blocking changes with them), and applies the sigmoid per element (torch.sigmoid takes another path for
        # a handful of values than for many): a verify's router then picks the experts plain steps pick
        scores_TE = torch.ops.mimo.router_decode(x_TD, gate_ED)
    else:
        scores_TE = F.linear(x_TD, gate_ED).sigmoid()
    if experts_TK is not None:
        weights_TK = scores_TE.gather(1, experts_TK)
        if norm_topk_prob:
            weights_TK = weights_TK / (weights_TK.sum(-1, keepdim=True) + 1e-20)
        return scores_TE, weights_TK * scaling, experts_TK
    choice_TE = scores_TE + bias_E.float()
    n_tok, n_exp = choice_TE.shape
    if n_group > 1:
        group_scores = choice_TE.view(n_tok, n_group, n_exp // n_group).topk(2, dim=-1)[0].sum(-1)  # [T, G]
        group_idx = group_scores.topk(topk_group, dim=-1, sorted=False)[1]
        keep_TG = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
        keep_TE = keep_TG[:, :, None].expand(n_tok, n_group, n_exp // n_group).reshape(n_tok, n_exp)
        choice_TE = choice_TE.masked_fill(~keep_TE, float("-inf"))
    # in expert order: an unsorted top-k's order may change with the number of tokens, and it is the order in
    # which the weights are normalised (and so their last bits)
    experts_TK = choice_TE.topk(top_k, dim=-1, sorted=False)[1].sort(dim=-1).values
    weights_TK = scores_TE.gather(1, experts_TK)
    if norm_topk_prob:
        weights_TK = weights_TK / (weights_TK.sum(-1, keepdim=True) + 1e-20)
    return scores_TE, weights_TK * scaling, experts_TK


def experts_forward(
    x_TD: torch.Tensor,
    w_gate_EID: torch.Tensor,  # [E, I, D]
    w_up_EID: torch.Tensor,  # [E, I, D]
    w_down_EDI: torch.Tensor,  # [E, D, I]
    weights_TK: torch.Tensor,
    experts_TK: torch.Tensor,
    scales: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    block: tuple[int, int] = (BLOCK, BLOCK),
) -> torch.Tensor:
    """Sum over each token's chosen experts of weight * down(silu(gate(x)) * up(x)).

    The expert tensors may hold any subset of the experts (``E`` of them: expert parallelism passes a rank's
    own) and any slice of the intermediate dim (tensor parallelism: then the result is a partial sum);
    ``experts_TK`` indexes them. Five ways to the same sum, by situation:

    * few assignments (decode) in fp32 or bf16 on a CPU, without autograd: mimo's C++ kernel
      ``torch.ops.mimo.moe_decode`` (``mimo/ops/kernels``), one pass over the chosen weights,
      eager or inside ``torch.compile``;
    * inside ``torch.compile`` with few assignments (decode): the chosen experts' weights are
      indexed inside einsums, which inductor turns into reductions that read each chosen
      weight once, with no Python loop and no host sync;
    * one token without autograd (eager batch-1 decode): a loop over its k experts, each output
      accumulated in place with its weight folded into the matmul;
    * many assignments without autograd (batched decode, verify, prefill): grouped matmuls
      (``torch._grouped_mm``: one C++ loop over all experts);
    * otherwise (autograd: the CPU grouped matmul has no backward): one ``F.linear`` triple per
      used expert.

    FP8 experts (``scales``: each projection's per-expert ``weight_scale_inv`` grids, ``block``: the
    ``weight_block_size``) are read as FP8 by ``torch.ops.mimo.moe_decode_fp8`` for a decode step, and
    otherwise dequantized one used expert at a time (never the whole layer in a wider type).
    """
    w = (w_gate_EID, w_up_EID, w_down_EDI)
    if w_gate_EID.dtype == FP8:
        if scales is None:
            raise ValueError("FP8 experts need their block scales (weight_scale_inv)")
        return _fp8_experts(x_TD, w, scales, block, weights_TK, experts_TK)
    n_tok, k = experts_TK.shape
    # few assignments (decode), or a verify-sized step over narrow weights (see mimo.ops.linear.EXACT_ROWS)
    few = n_tok * k <= w_gate_EID.shape[0] or (kernel_rows(x_TD, w_gate_EID) == EXACT_ROWS and n_tok <= EXACT_ROWS)
    if few and kernels.ready(x_TD, *w):
        return torch.ops.mimo.moe_decode(x_TD, *w, weights_TK.float(), experts_TK)
    if w_gate_EID.dtype != x_TD.dtype:  # e.g. bf16 experts under fp32 activations
        dt = gemm_dtype(x_TD, w_gate_EID)
        if dt == w_gate_EID.dtype:
            return experts_forward(x_TD.to(dt), *w, weights_TK, experts_TK).to(x_TD.dtype)
        return _converted_experts(x_TD, dt, w[0].shape[0], lambda p, e: w[p][e].to(dt), weights_TK, experts_TK)
    if torch.compiler.is_compiling():
        if few:
            return _gathered(x_TD, *w, weights_TK, experts_TK)
        # a graph break: the same dispatch, eagerly (the grouped matmul cannot be traced in fp32)
        return _experts_forward_eager(x_TD, *w, weights_TK, experts_TK)
    if n_tok == 1 and not torch.is_grad_enabled():
        return _one_token(x_TD, *w, weights_TK, experts_TK)
    return _sorted(x_TD, *w, weights_TK, experts_TK)


def _sorted(x_TD, w_gate_EID, w_up_EID, w_down_EDI, weights_TK, experts_TK) -> torch.Tensor:
    """Group the T*K (token, expert) assignments by expert; each expert runs once over its tokens."""
    n_tok, k = experts_TK.shape
    flat_e = experts_TK.reshape(-1)
    order = torch.argsort(flat_e, stable=True)
    token = order // k  # the token of each sorted assignment
    x_sorted = x_TD.index_select(0, token)
    n_exp = w_gate_EID.shape[0]
    w_sorted = weights_TK.reshape(-1)[order, None].to(x_TD.dtype)
    # The grouped matmul visits every expert, used or not; a few assignments go faster one by one.
    if _GROUPED and not torch.is_grad_enabled() and 2 * flat_e.numel() >= n_exp:
        offs = torch.bincount(flat_e, minlength=n_exp).cumsum(0, dtype=torch.int32)
        gate = torch._grouped_mm(x_sorted, w_gate_EID.transpose(1, 2), offs=offs)
        up = torch._grouped_mm(x_sorted, w_up_EID.transpose(1, 2), offs=offs)
        act = F.silu(gate).mul_(up).mul_(w_sorted)  # down is linear: weight the narrower activation
        y_sorted = torch._grouped_mm(act, w_down_EDI.transpose(1, 2), offs=offs)
    else:
        counts = torch.bincount(flat_e, minlength=n_exp).tolist()
        parts, start = [], 0
        for e, c in enumerate(counts):
            if c == 0:
                continue
            xe = x_sorted[start : start + c]
            parts.append(F.linear(F.silu(F.linear(xe, w_gate_EID[e])) * F.linear(xe, w_up_EID[e]), w_down_EDI[e]))
            start += c
        y_sorted = torch.cat(parts) * w_sorted
    # Each token's k contributions, added back in its row (sequential reads; no un-sorting copy).
    return x_TD.new_zeros(n_tok, x_TD.shape[-1]).index_add_(0, token, y_sorted)


def _one_token(x_1D, w_gate_EID, w_up_EID, w_down_EDI, weights_1K, experts_1K) -> torch.Tensor:
    """Batch-1 decode: accumulate each chosen expert's output in place, weight folded into the matmul."""
    out = x_1D.new_zeros(x_1D.shape)
    for e, w in zip(experts_1K[0].tolist(), weights_1K[0].tolist()):
        act = F.silu(F.linear(x_1D, w_gate_EID[e])) * F.linear(x_1D, w_up_EID[e])
        out.addmm_(act, w_down_EDI[e].t(), alpha=w)
    return out


def _gathered(x_TD, w_gate_EID, w_up_EID, w_down_EDI, weights_TK, experts_TK) -> torch.Tensor:
    """For torch.compile: index the chosen experts' weights inside the matmul (inductor fuses the
    index into the reduction, so no weight is copied) - no Python loop, no host sync."""
    n_tok, k = experts_TK.shape
    if n_tok == 1:  # one token's k experts are distinct: each weight is read once as it is
        gate = torch.einsum("tkfd,td->tkf", w_gate_EID[experts_TK], x_TD)
        up = torch.einsum("tkfd,td->tkf", w_up_EID[experts_TK], x_TD)
        y = torch.einsum("tkdi,tki->tkd", w_down_EDI[experts_TK], F.silu(gate) * up)
        return (y * weights_TK[..., None].to(y.dtype)).sum(1)
    # Several tokens: sort the assignments by expert, so an expert chosen twice is read twice in
    # a row (the second time from cache).
    flat_e = experts_TK.reshape(-1)
    order = torch.argsort(flat_e)
    e_sorted = flat_e[order]
    x_sorted = x_TD.index_select(0, order // k)
    gate = torch.einsum("nfd,nd->nf", w_gate_EID[e_sorted], x_sorted)
    up = torch.einsum("nfd,nd->nf", w_up_EID[e_sorted], x_sorted)
    y = torch.einsum("ndi,ni->nd", w_down_EDI[e_sorted], F.silu(gate) * up)
    y = y * weights_TK.reshape(-1)[order, None].to(y.dtype)
    return y.index_select(0, torch.argsort(order)).view(n_tok, k, -1).sum(1)


def _fp8_experts(x_TD, w, scales, block, weights_TK, experts_TK) -> torch.Tensor:
    n_tok, k = experts_TK.shape
    few = n_tok * k <= w[0].shape[0] or (kernel_rows(x_TD, w[0]) == EXACT_ROWS and n_tok <= EXACT_ROWS)
    if few and kernels.ready_fp8(x_TD, *w):
        return torch.ops.mimo.moe_decode_fp8(x_TD, *w, *scales, block[0], block[1], weights_TK.float(), experts_TK)
    if torch.compiler.is_compiling():  # a graph break: a loop over the experts the routing chose
        return _fp8_experts_eager(x_TD, w, scales, block, weights_TK, experts_TK)
    (i_dim, d_dim), device = w[0].shape[1:], x_TD.device
    rows_i = scale_rows(i_dim, scales[0].shape[1], block[0], device=device)
    rows_d = scale_rows(d_dim, scales[2].shape[1], block[0], device=device)
    dt = gemm_dtype(x_TD, w[0])

    def weight(p: int, e: int) -> torch.Tensor:
        return dequantize(w[p][e], scales[p][e], rows_d if p == 2 else rows_i, block[1], dt)

    return _converted_experts(x_TD, dt, w[0].shape[0], weight, weights_TK, experts_TK)


def _converted_experts(x_TD, dt, n_exp, weight, weights_TK, experts_TK) -> torch.Tensor:
    """The experts over weights held in a dtype the GEMM cannot take: ``weight(p, e)`` converts projection
    ``p`` (gate, up, down) of expert ``e`` to ``dt``, one used expert at a time (never the whole layer)."""
    n_tok, k = experts_TK.shape
    flat_e = experts_TK.reshape(-1)
    order = torch.argsort(flat_e, stable=True)
    token = order // k
    x_sorted = x_TD.index_select(0, token).to(dt)
    w_sorted = weights_TK.reshape(-1)[order, None].to(dt)
    parts, start = [], 0
    for e, c in enumerate(torch.bincount(flat_e, minlength=n_exp).tolist()):
        if c == 0:
            continue
        xe = x_sorted[start : start + c]
        act = F.silu(F.linear(xe, weight(0, e))) * F.linear(xe, weight(1, e))
        parts.append(F.linear(act, weight(2, e)))
        start += c
    y_sorted = (torch.cat(parts) * w_sorted).to(x_TD.dtype)
    return x_TD.new_zeros(n_tok, x_TD.shape[-1]).index_add_(0, token, y_sorted)


_GROUPED = hasattr(torch, "_grouped_mm")
_fp8_experts_eager = torch.compiler.disable(_fp8_experts)
_experts_forward_eager = torch.compiler.disable(experts_forward)
