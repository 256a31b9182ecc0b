"""FP8 (e4m3) block-quantized weights, the release's format (``quantization_config``: ``fmt`` e4m3,
``weight_block_size`` [rows, cols], 128x128 in MiMo-V2-Flash), kept as FP8 or dequantized.

``weight_scale_inv`` is a dequantization *multiplier* per block: ``W[r, c] = float(Wq[r, c]) *
scale_inv[row_block(r), c // block_cols]``. Which scale row a weight row uses is one int32 per row
(:func:`scale_rows`), so every layout is the same code:

* uniform: ``scale.shape[0] == ceil(rows / block_rows)``, row r -> r // block_rows;
* chunked rows: the checkpoint was quantized per tensor-parallel shard / per KV head, so the row grid
  restarts every ``rows / n_chunks`` rows (``scale.shape[0] == n_chunks * ceil(rows / n_chunks /
  block_rows)``): the release's full-attention k_proj (4 heads of 192 rows, scales [8, 32]);
* fused projections (q/k/v, gate/up): the members' row indices, concatenated with offsets.

Which layout applies is decided from the scale's shape alone; a shape that fits neither is an error.
Kept as FP8 (``dtype="auto"``), a weight is used by mimo's C++ decode kernels directly and dequantized
one weight (or one expert) at a time elsewhere (:func:`dequantize`); NaN codes are refused at load.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
BLOCK = 128
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


def block_shape(block: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``weight_block_size`` as (rows, cols): an int is a square block."""
    if isinstance(block, int):
        block = (block, block)
    rows, cols = (int(b) for b in block)
    if rows < 1 or cols < 1:
        raise ValueError(f"weight_block_size must be positive, got {block}")
    return rows, cols


def scale_rows(rows: int, n_scale_rows: int, block_rows: int = BLOCK, chunk_candidates: tuple[int, ...] = (),
               device: torch.device | str | None = None) -> torch.Tensor:
    """For each weight row, the index of its scale row (int32 [rows]); see the module docstring."""
    r = torch.arange(rows, device=device)
    if n_scale_rows == math.ceil(rows / block_rows):
        return (r // block_rows).to(torch.int32)
    for n_chunks in chunk_candidates:
        if n_chunks <= 1 or rows % n_chunks:
            continue
        chunk = rows // n_chunks
        per = math.ceil(chunk / block_rows)
        if n_chunks * per == n_scale_rows:
            return ((r // chunk) * per + (r % chunk) // block_rows).to(torch.int32)
    raise ValueError(
        f"weight_scale_inv has {n_scale_rows} block rows, which fits neither a uniform {block_rows}-row grid over "
        f"{rows} rows ({math.ceil(rows / block_rows)}) nor a per-chunk grid (tried {list(chunk_candidates)} chunks)"
    )


def check_scale_cols(cols: int, scale: torch.Tensor, block_cols: int) -> None:
    if scale.shape[-1] != math.ceil(cols / block_cols):
        raise ValueError(f"weight_scale_inv has {scale.shape[-1]} block columns; {cols} columns need "
                         f"{math.ceil(cols / block_cols)} (weight_block_size columns {block_cols})")


def dequantize(weight: torch.Tensor, scale: torch.Tensor, row_index: torch.Tensor, block_cols: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``float(weight) * scale[row_index, col // block_cols]`` in ``dtype`` ([rows, cols]), the product rounded once.

    mimo's C++ kernel does it when loaded (torch's own fp8 conversion is scalar on AVX2 CPUs); the torch path
    gives the same bits."""
    from mimo.ops import kernels

    if kernels.ready_fp8(weight) and dtype in (torch.float32, torch.bfloat16) and weight.device.type == "cpu":
        return torch.ops.mimo.dequant_fp8(weight, scale.float().contiguous(), row_index, block_cols, dtype)
    rows, cols = weight.shape
    nc = scale.shape[-1]
    w = weight.float()
    if nc * block_cols != cols:
        w = F.pad(w, (0, nc * block_cols - cols))
    s = scale.float().index_select(0, row_index.long())  # [rows, nc]
    return (w.view(rows, nc, block_cols) * s[:, :, None]).view(rows, nc * block_cols)[:, :cols].to(dtype)


def dequantize_block_fp8(
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    block: int | tuple[int, int] = BLOCK,
    chunk_candidates: tuple[int, ...] = (2, 4, 8, 16, 32, 64),
) -> torch.Tensor:
    """A whole FP8 weight in ``dtype``, its scale layout read from the scale's shape."""
    if weight.ndim != 2 or scale_inv.ndim != 2:
        raise ValueError(f"FP8 weight and scale must be 2-D, got {tuple(weight.shape)} and {tuple(scale_inv.shape)}")
    br, bc = block_shape(block)
    rows, cols = weight.shape
    check_scale_cols(cols, scale_inv, bc)
    index = scale_rows(rows, scale_inv.shape[0], br, chunk_candidates, weight.device)
    return dequantize(weight, scale_inv, index, bc, dtype)


def quantize_block_fp8(
    weight: torch.Tensor, block: int | tuple[int, int] = BLOCK, n_chunks: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D weight to e4m3 with one scale per block (the inverse of :func:`dequantize_block_fp8`):
    each block's largest magnitude maps to e4m3's largest, 448. ``n_chunks > 1`` restarts the row grid every
    ``rows / n_chunks`` rows (the per-head layout). Returns (fp8 weight, fp32 ``weight_scale_inv``)."""
    rows, cols = weight.shape
    if rows % n_chunks:
        raise ValueError(f"{rows} rows do not split into {n_chunks} chunks")
    br, bc = block_shape(block)
    chunk = rows // n_chunks
    per, nc = math.ceil(chunk / br), math.ceil(cols / bc)
    w = weight.float().reshape(n_chunks, chunk, cols)
    padded = F.pad(w, (0, nc * bc - cols, 0, per * br - chunk))  # zero padding never raises a block's max
    blocks = padded.view(n_chunks, per, br, nc, bc)
    scales = blocks.abs().amax(dim=(2, 4)).clamp(min=1e-12) / FP8_MAX  # [n_chunks, per, nc]
    q = (blocks / scales[:, :, None, :, None]).to(FP8)
    q = q.view(n_chunks, per * br, nc * bc)[:, :chunk, :cols].reshape(rows, cols).contiguous()
    return q, scales.reshape(n_chunks * per, nc).contiguous()


def nan_scratch(step: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Buffers for :func:`nan_codes`, made once for a whole checkpoint."""
    return np.empty(step, dtype=np.uint8), np.empty(step, dtype=np.bool_)


def nan_codes(weight: torch.Tensor, scratch: tuple[np.ndarray, np.ndarray] | None = None) -> int:
    """How many codes of a CPU FP8 tensor are NaN (0x7f / 0xff), read in slices through ``scratch``
    (:func:`nan_scratch`). Single-threaded NumPy into reused buffers: checking a whole checkpoint then
    allocates nothing (per-weight temporaries fragment the heap, and freed pages stay resident)."""
    flat = weight.reshape(-1).view(torch.uint8).numpy()
    masked, hit = scratch or nan_scratch(min(1 << 20, max(1, flat.size)))
    step = masked.size
    bad = 0
    for i in range(0, flat.size, step):
        part = flat[i : i + step]
        m, h = masked[: part.size], hit[: part.size]
        np.bitwise_and(part, 0x7F, out=m)
        np.equal(m, 0x7F, out=h)
        bad += int(np.count_nonzero(h))
    return bad
