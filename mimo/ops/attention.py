"""Attention with grouped KV heads, a sliding window and per-head sink logits (spec §2.4).

Keys carry their absolute positions (``k_pos``), so one mask rule serves every caller —
training, prefill, decode over a ring buffer, speculative verify — and a slot with
``k_pos < 0`` is simply empty:

    key j visible to query i  <=>  0 <= k_pos[j] <= q_pos[i]  and  q_pos[i] - k_pos[j] < window

Sinks (gpt-oss / MiMo, paper eq. 2-3): one learnable logit per query head joins the softmax
denominator but carries no value, so each row's weights sum to less than one.

Two implementations of the same function:

* ``reference``: explicit fp32 scores, mask, sink column, softmax, drop the column;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with the sink expressed as an
  extra all-zero key/value whose additive mask entry is the sink logit (score = 0 + sink).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_NEG = torch.finfo(torch.float32).min  # finite, so rows with no visible key stay NaN-free


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """q_pos [B, T], k_pos [B, S] -> bool [B, T, S]."""
    q = q_pos[:, :, None]
    k = k_pos[:, None, :]
    m = (k >= 0) & (k <= q)
    if window is not None:
        m &= (q - k) < window
    return m


def attention_reference(
    q: torch.Tensor,  # [B, Hq, T, Dqk]
    k: torch.Tensor,  # [B, Hkv, S, Dqk]
    v: torch.Tensor,  # [B, Hkv, S, Dv]
    mask: torch.Tensor,  # bool [B, T, S]
    scale: float,
    sinks: torch.Tensor | None,  # [Hq]
) -> torch.Tensor:  # [B, Hq, T, Dv]
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    rep = hq // hkv
    # Query head h reads KV head h // rep: group the query heads instead of copying K and V.
    qg = q.float().view(b, hkv, rep, t, d)
    scores = torch.matmul(qg, k.float()[:, :, None].transpose(-1, -2)) * scale  # [B, Hkv, rep, T, S]
    scores = scores.masked_fill(~mask[:, None, None], _NEG)
    if sinks is not None:
        sink_col = sinks.float().view(1, hkv, rep, 1, 1).expand(b, hkv, rep, t, 1)
        scores = torch.cat([scores, sink_col], dim=-1)
    probs = torch.softmax(scores, dim=-1)
    if sinks is not None:
        probs = probs[..., :s]
    out = torch.matmul(probs, v.float()[:, :, None])  # [B, Hkv, rep, T, Dv]
    return out.reshape(b, hq, t, v.shape[-1]).to(q.dtype)


def attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, sinks: torch.Tensor | None
) -> torch.Tensor:
    b, hq, t, _ = q.shape
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, torch.finfo(q.dtype).min)
    bias = bias[:, None]  # [B, 1, T, S]
    if sinks is not None:
        hkv = k.shape[1]
        k = torch.cat([k, k.new_zeros(b, hkv, 1, k.shape[-1])], dim=2)
        v = torch.cat([v, v.new_zeros(b, hkv, 1, v.shape[-1])], dim=2)
        sink_col = sinks.to(q.dtype).view(1, hq, 1, 1).expand(b, hq, t, 1)
        bias = torch.cat([bias.expand(b, hq, t, bias.shape[-1]), sink_col], dim=-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=True)


BACKENDS = {"reference": attention_reference, "sdpa": attention_sdpa}


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    window: int | None,
    scale: float,
    sinks: torch.Tensor | None = None,
    backend: str = "reference",
) -> torch.Tensor:
    try:
        fn = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {', '.join(BACKENDS)}") from None
    return fn(q, k, v, visible(q_pos, k_pos, window), scale, sinks)
