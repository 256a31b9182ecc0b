"""Partial rotary position embedding, NeoX (rotate-half) layout, on the first ``rotary_dim`` dims (spec §2.4.3).

cos/sin are computed in fp32 from integer positions and cast to the activation dtype, as
transformers does; the remaining head dims pass through untouched.
"""

from __future__ import annotations

import torch


def inv_freq(rotary_dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim))


def cos_sin(positions: torch.Tensor, freqs: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [B, T] (int) -> cos, sin [B, T, rotary_dim] in ``dtype``."""
    angles = positions.to(torch.float32)[..., None] * freqs.to(positions.device)  # [B, T, R/2]
    emb = torch.cat((angles, angles), dim=-1)  # [B, T, R]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; cos/sin [B, T, R] with R <= D. Rotates dims [0, R) of every head."""
    r = cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, R]
    x_rot, x_pass = x[..., :r], x[..., r:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)
