"""Bias-free linear maps of the inference paths: ``F.linear``, mimo's decode kernel for a few rows, and
weights kept as FP8 with block scales (:mod:`mimo.ops.fp8`)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from mimo.ops import kernels
from mimo.ops.fp8 import FP8, dequantize

DECODE_ROWS = 8
"""Up to this many input rows (a decode step's batch), fp32, bf16 or FP8 weights on a CPU without autograd,
take mimo's decode kernels, which stream the weights faster than MKL's GEMM does for so few rows
(benchmarks/README.md, "Why the code is the way it is")."""


@functools.cache
def _fast_bf16_gemm() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def gemm_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype to dequantize an FP8 weight into for a GEMM with ``x``: bf16 where the CPU multiplies bf16 fast
    (AVX512-BF16, AMX), fp32 where it has only AVX2 (bf16 GEMMs are then several times slower than fp32),
    ``x``'s own on other devices."""
    if x.device.type != "cpu" or x.dtype != torch.bfloat16:
        return x.dtype
    return torch.bfloat16 if _fast_bf16_gemm() else torch.float32


def linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
           row_index: torch.Tensor | None = None, block_cols: int = 128) -> torch.Tensor:
    """``x @ weight.T`` over the last dimension. An FP8 ``weight`` comes with its block scales (``scale``: the
    checkpoint's ``weight_scale_inv``, ``row_index``: each row's scale row) and is read as FP8 by the decode
    kernel, or dequantized to ``x``'s dtype for this one product elsewhere (prefill, no kernels)."""
    rows = x.numel() // max(1, x.shape[-1])
    if weight.dtype == FP8:
        if scale is None or row_index is None:
            raise ValueError("an FP8 weight needs its block scales (weight_scale_inv) and their row index")
        if 0 < rows <= DECODE_ROWS and kernels.ready_fp8(x, weight):
            y = torch.ops.mimo.linear_decode_fp8(x.reshape(rows, x.shape[-1]), weight, scale, row_index, block_cols)
            return y.view(*x.shape[:-1], weight.shape[0])
        dt = gemm_dtype(x)
        return F.linear(x.to(dt), dequantize(weight, scale, row_index, block_cols, dt)).to(x.dtype)
    if 0 < rows <= DECODE_ROWS and kernels.ready(x, weight):
        y = torch.ops.mimo.linear_decode(x.reshape(rows, x.shape[-1]), weight)
        return y.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight)
