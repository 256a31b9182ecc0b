"""Attention with grouped KV heads, a sliding window and per-head sink logits (paper §2.1).

Keys carry their absolute positions (``k_pos``), so one mask rule serves every caller —
training, prefill, decode over a ring buffer, speculative verify — and a slot with
``k_pos < 0`` is simply empty:

    key j visible to query i  <=>  0 <= k_pos[j] <= q_pos[i]  and  q_pos[i] - k_pos[j] < window

Sinks (gpt-oss / MiMo, paper eq. 2-3): one learnable logit per query head joins the softmax
denominator but carries no value, so each row's weights sum to less than one.

The mask depends only on positions, and every layer of one attention kind sees the same
positions in a forward pass, so callers build a :class:`Visibility` once per kind per forward
and hand it to every layer of that kind (it also caches the additive-bias form per dtype).

Three implementations of the same function:

* ``reference``: explicit fp32 scores, mask, sink column, softmax, drop the column;
* ``grouped``: the same arithmetic in the activation dtype with an additive bias, query heads
  grouped onto their KV head (no K/V copies): the fast path for a few queries (decode, verify);
  where mimo's CPU kernels are loaded, one call (``mimo::attention_decode``) that skips masked keys;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with the sink expressed as an
  extra all-zero key/value whose additive mask entry is the sink logit (score = 0 + sink); the
  backend for long chunks (prefill, training). Short chunks under ``sdpa`` take ``grouped``,
  which avoids SDPA's per-call K/V copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mimo.ops import kernels

_NEG = torch.finfo(torch.float32).min  # finite, so rows with no visible key stay NaN-free
SHORT_QUERY = 16  # chunks of at most this many queries use the grouped path under "sdpa"
QUERY_BLOCK = 128  # long chunks under "sdpa" attend in query blocks of this many rows


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """q_pos [B, T], k_pos [B, S] -> bool [B, T, S]."""
    q = q_pos[:, :, None]
    k = k_pos[:, None, :]
    m = (k >= 0) & (k <= q)
    if window is not None:
        m &= (q - k) < window
    return m


class Visibility:
    """One forward's mask for one attention kind, with its additive-bias form cached per dtype."""

    __slots__ = ("q_pos", "k_pos", "window", "_mask", "_bias", "_blocks")

    def __init__(self, q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> None:
        self.q_pos, self.k_pos, self.window = q_pos, k_pos, window
        self._mask: torch.Tensor | None = None  # built when first read: the decode kernel reads the positions
        self._bias: dict[object, torch.Tensor] = {}
        self._blocks: dict[tuple[torch.dtype, int], list | None] = {}

    @property
    def mask(self) -> torch.Tensor:
        """bool [B, T, S]: key j visible to query i."""
        if self._mask is None:
            self._mask = visible(self.q_pos, self.k_pos, self.window)
        return self._mask

    def bias(self, dtype: torch.dtype) -> torch.Tensor:
        """[B, T, S]: 0 where visible, the dtype's most negative finite value elsewhere."""
        b = self._bias.get(dtype)
        if b is None:
            b = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device)
            b.masked_fill_(~self.mask, torch.finfo(dtype).min)
            self._bias[dtype] = b
        return b

    def grouped_bias(self, dtype: torch.dtype, hkv: int, rep: int) -> torch.Tensor:
        """[B*Hkv, rep*T, S]: the bias laid out like grouped scores (query heads of a KV head together)."""
        key = (dtype, hkv, rep)
        g = self._bias.get(key)
        if g is None:
            bias = self.bias(dtype)
            b, t, s = bias.shape
            g = bias[:, None, None].expand(b, hkv, rep, t, s).reshape(b * hkv, rep * t, s)
            self._bias[key] = g
        return g

    def blocks(self, dtype: torch.dtype, size: int) -> list[tuple[int, int, torch.Tensor, torch.Tensor]] | None:
        """Query blocks of ``size`` rows with only the key columns some row of the block can see:
        (start, end, columns, bias [B, end-start, n]). None when that would skip under a quarter
        of the keys (then one call over everything is cheaper). Dropped columns are masked for
        every row of their block, so attention over the kept ones is the same function."""
        key = (dtype, size)
        if key not in self._blocks:
            b, t, s = self.mask.shape
            out, kept = [], 0
            for i0 in range(0, t, size):
                i1 = min(t, i0 + size)
                cols = self.mask[:, i0:i1].any(dim=1).any(dim=0).nonzero().flatten()
                if cols.numel() == 0:  # a block of padding rows: one masked column keeps them finite
                    cols = torch.zeros(1, dtype=torch.long, device=self.mask.device)
                kept += (i1 - i0) * len(cols)
                out.append((i0, i1, cols, self.bias(dtype)[:, i0:i1].index_select(-1, cols)))
            self._blocks[key] = out if kept < 0.75 * t * s else None
        return self._blocks[key]


def attention_reference(
    q: torch.Tensor,  # [B, Hq, T, Dqk]
    k: torch.Tensor,  # [B, Hkv, S, Dqk]
    v: torch.Tensor,  # [B, Hkv, S, Dv]
    vis: Visibility,
    scale: float,
    sinks: torch.Tensor | None,  # [Hq]
) -> torch.Tensor:  # [B, Hq, T, Dv]
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    rep = hq // hkv
    # Query head h reads KV head h // rep: group the query heads instead of copying K and V.
    qg = q.float().view(b, hkv, rep, t, d)
    scores = torch.matmul(qg, k.float()[:, :, None].transpose(-1, -2)) * scale  # [B, Hkv, rep, T, S]
    scores = scores.masked_fill(~vis.mask[:, None, None], _NEG)
    if sinks is not None:
        sink_col = sinks.float().view(1, hkv, rep, 1, 1).expand(b, hkv, rep, t, 1)
        scores = torch.cat([scores, sink_col], dim=-1)
    probs = torch.softmax(scores, dim=-1)
    if sinks is not None:
        probs = probs[..., :s]
    out = torch.matmul(probs, v.float()[:, :, None])  # [B, Hkv, rep, T, Dv]
    return out.reshape(b, hq, t, v.shape[-1]).to(q.dtype)


def attention_grouped(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility, scale: float, sinks: torch.Tensor | None
) -> torch.Tensor:
    if kernels.ready_attention(q, k, v):  # one call instead of 5-8 ops (and their copies) per layer
        return torch.ops.mimo.attention_decode(q, k, v, vis.q_pos, vis.k_pos, vis.window or 0, sinks, scale)
    if q.dtype != torch.float32:
        return attention_reference(q, k, v, vis, scale, sinks)  # softmax in fp32 for half-precision models
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    rep = hq // hkv
    # Rows of a KV head's group are (query head in group, query): a view of [B, Hq, T, D].
    qg = q.reshape(b * hkv, rep * t, d)
    scores = torch.baddbmm(
        vis.grouped_bias(q.dtype, hkv, rep), qg, k.reshape(b * hkv, s, d).transpose(1, 2),
        alpha=scale,
    )  # [B*Hkv, rep*T, S]
    if sinks is not None:
        sink_col = sinks.to(scores.dtype).view(1, hq, 1).expand(b, hq, t).reshape(b * hkv, rep * t, 1)
        probs = torch.softmax(torch.cat([scores, sink_col], dim=-1), dim=-1)[..., :s]
    else:
        probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs, v.reshape(b * hkv, s, v.shape[-1]))  # [B*Hkv, rep*T, Dv]
    return out.view(b, hq, t, v.shape[-1])


def attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility, scale: float, sinks: torch.Tensor | None
) -> torch.Tensor:
    b, hq, t, _ = q.shape
    if t <= SHORT_QUERY:
        return attention_grouped(q, k, v, vis, scale, sinks)
    blocks = vis.blocks(q.dtype, QUERY_BLOCK) if t >= 2 * QUERY_BLOCK else None
    if blocks is not None:  # long chunk under a causal or sliding mask: skip the keys no row of a block sees
        return torch.cat([
            _sdpa(q[:, :, i0:i1], k.index_select(2, cols), v.index_select(2, cols), bias[:, None], scale, sinks)
            for i0, i1, cols, bias in blocks
        ], dim=2)
    return _sdpa(q, k, v, vis.bias(q.dtype)[:, None], scale, sinks)


def _sdpa(q, k, v, bias, scale, sinks) -> torch.Tensor:
    """SDPA with the sink as an extra zero key/value; bias [B, 1, T, S]."""
    b, hq, t, _ = q.shape
    if sinks is not None:
        hkv = k.shape[1]
        k = torch.cat([k, k.new_zeros(b, hkv, 1, k.shape[-1])], dim=2)
        v = torch.cat([v, v.new_zeros(b, hkv, 1, v.shape[-1])], dim=2)
        sink_col = sinks.to(q.dtype).view(1, hq, 1, 1).expand(b, hq, t, 1)
        bias = torch.cat([bias.expand(b, hq, t, bias.shape[-1]), sink_col], dim=-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=True)


BACKENDS = {"reference": attention_reference, "grouped": attention_grouped, "sdpa": attention_sdpa}


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {', '.join(BACKENDS)}")
    return backend


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    vis: Visibility,
    scale: float,
    sinks: torch.Tensor | None = None,
    backend: str = "reference",
) -> torch.Tensor:
    return BACKENDS[check_backend(backend)](q, k, v, vis, scale, sinks)
