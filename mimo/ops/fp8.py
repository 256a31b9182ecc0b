"""FP8 (e4m3) block-quantized weights: dequantization at load time (the release's ``quantization_config``: e4m3, 128x128 blocks).

``weight_scale_inv`` is a dequantization *multiplier* per 128x128 block. Two layouts exist:

* uniform: ``scale.shape == (ceil(rows/128), ceil(cols/128))``;
* chunked rows: the checkpoint was quantized per tensor-parallel shard / per KV head, so the
  128-row grid restarts every ``rows / n_chunks`` rows (``scale.shape[0] == n_chunks *
  ceil(rows / n_chunks / 128)``). The full-attention k_proj of MiMo-V2-Flash (4 heads of 192
  rows, scales [8, 32]) is the known case.

Which layout applies is decided from the scale's shape alone; a shape that fits neither is an error.
"""

from __future__ import annotations

import math

import torch

BLOCK = 128


def _row_blocks(rows: int, n_scale_rows: int, block: int, chunk_candidates: tuple[int, ...],
                device: torch.device | None = None) -> torch.Tensor:
    """For each weight row, the index of its scale row."""
    if n_scale_rows == math.ceil(rows / block):
        return torch.arange(rows, device=device) // block
    for n_chunks in chunk_candidates:
        if n_chunks <= 1 or rows % n_chunks:
            continue
        chunk = rows // n_chunks
        per = math.ceil(chunk / block)
        if n_chunks * per == n_scale_rows:
            r = torch.arange(rows, device=device)
            return (r // chunk) * per + (r % chunk) // block
    raise ValueError(
        f"weight_scale_inv has {n_scale_rows} block rows, which fits neither a uniform {block}-row grid over "
        f"{rows} rows ({math.ceil(rows / block)}) nor a per-chunk grid (tried {list(chunk_candidates)} chunks)"
    )


def dequantize_block_fp8(
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    block: int = BLOCK,
    chunk_candidates: tuple[int, ...] = (2, 4, 8, 16, 32, 64),
) -> torch.Tensor:
    """W[r, c] = float(Wq[r, c]) * scale_inv[row_block(r), c // block], returned in ``dtype``."""
    if weight.ndim != 2 or scale_inv.ndim != 2:
        raise ValueError(f"FP8 weight and scale must be 2-D, got {tuple(weight.shape)} and {tuple(scale_inv.shape)}")
    rows, cols = weight.shape
    if scale_inv.shape[1] != math.ceil(cols / block):
        raise ValueError(
            f"weight_scale_inv has {scale_inv.shape[1]} block columns; {cols} columns need {math.ceil(cols / block)}"
        )
    row_idx = _row_blocks(rows, scale_inv.shape[0], block, chunk_candidates, weight.device)
    col_idx = torch.arange(cols, device=weight.device) // block
    scale = scale_inv.float()[row_idx][:, col_idx]  # [rows, cols]
    return (weight.float() * scale).to(dtype)


def quantize_block_fp8(
    weight: torch.Tensor, block: int = BLOCK, n_chunks: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D weight to e4m3 with per-block scales (the inverse of :func:`dequantize_block_fp8`).

    ``n_chunks > 1`` restarts the row grid every ``rows / n_chunks`` rows, reproducing the
    per-head layout. Used to build test checkpoints and FP8 exports.
    """
    rows, cols = weight.shape
    if rows % n_chunks:
        raise ValueError(f"{rows} rows do not split into {n_chunks} chunks")
    fmax = torch.finfo(torch.float8_e4m3fn).max
    chunk = rows // n_chunks
    per = math.ceil(chunk / block)
    nc = math.ceil(cols / block)
    scales = torch.empty(n_chunks * per, nc, dtype=torch.float32, device=weight.device)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn, device=weight.device)
    w = weight.float()
    for c in range(n_chunks):
        for i in range(per):
            r0 = c * chunk + i * block
            r1 = min(r0 + block, (c + 1) * chunk)
            for j in range(nc):
                c0, c1 = j * block, min((j + 1) * block, cols)
                blk = w[r0:r1, c0:c1]
                s = blk.abs().max().clamp(min=1e-12) / fmax
                scales[c * per + i, j] = s
                q[r0:r1, c0:c1] = (blk / s).to(torch.float8_e4m3fn)
    return q, scales
