"""Partial rotary position embedding, NeoX (rotate-half) layout, on the first ``rotary_dim`` dims (paper Table 1: 64 of 192 dims).

cos/sin are computed in fp32 from integer positions and cast to the activation dtype, as
transformers does; the remaining head dims pass through untouched.

For speed the tables cover the whole head: ``cos`` is 1 and ``sin`` 0 on the pass-through dims,
and rotate-half is a fixed permutation of the head dims with its sign folded into ``sin``, so
applying RoPE is ``x * cos + x[..., perm] * sin`` (four kernels, no slicing or concatenation).
Every product and sum is the one the textbook form computes, so the result is bitwise equal.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Rope(NamedTuple):
    cos: torch.Tensor  # [B, T, D]
    sin: torch.Tensor  # [B, T, D], sign of rotate-half folded in, 0 on pass-through dims
    perm: torch.Tensor  # [D] long: rotate-half as a gather


def inv_freq(rotary_dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim))


def rotate_half_perm(rotary_dim: int, head_dim: int, device: torch.device | None = None) -> torch.Tensor:
    half = rotary_dim // 2
    idx = torch.arange(head_dim, device=device)
    return torch.cat((idx[half:rotary_dim], idx[:half], idx[rotary_dim:]))


def rope_tables(positions: torch.Tensor, freqs: torch.Tensor, head_dim: int, perm: torch.Tensor,
                dtype: torch.dtype) -> Rope:
    """positions [B, T] (int) -> the :class:`Rope` for heads of ``head_dim`` whose first 2*len(freqs) dims rotate."""
    half = freqs.shape[0]
    angles = positions.to(torch.float32)[..., None] * freqs.to(positions.device)  # [B, T, R/2]
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    pad = head_dim - 2 * half
    ones = cos.new_ones(*cos.shape[:-1], pad)
    cos_full = torch.cat((cos, cos, ones), dim=-1)
    sin_full = torch.cat((-sin, sin, torch.zeros_like(ones)), dim=-1)
    return Rope(cos_full, sin_full, perm)


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """x [B, T, H, D] -> x with dims [0, R) of every head rotated by its position."""
    cos, sin = rope.cos[:, :, None], rope.sin[:, :, None]  # [B, T, 1, D]
    return x * cos + x.index_select(-1, rope.perm) * sin
