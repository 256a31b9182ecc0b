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

EXACT_ROWS = 64
"""Under fp32 activations, weights held narrower (bf16, FP8) take the decode kernels up to this many rows (16
sequences verifying 3 drafts each): the kernels sum exact products in fp32 with the same arithmetic for any
number of rows, so a speculative verify computes what plain decode steps compute (greedy outputs identical),
where a bf16 GEMM would round the activations first. Longer inputs (prefill) take :func:`gemm_dtype`."""


def kernel_rows(x: torch.Tensor, weight: torch.Tensor) -> int:
    """How many rows of ``x`` times ``weight`` the decode kernels take (see :data:`EXACT_ROWS`)."""
    return EXACT_ROWS if x.dtype == torch.float32 and weight.dtype != torch.float32 else DECODE_ROWS


@functools.cache
def _fast_bf16_gemm() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def gemm_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype of a GEMM between activations ``x`` and a weight held in another dtype (bf16 or FP8 under
    fp32 activations, say): bf16 where bf16 GEMMs are fast (a CPU with AVX512-BF16 or AMX, any GPU), else
    fp32 (on an AVX2-only CPU bf16 GEMMs are several times slower than fp32). Same dtypes: that dtype."""
    if weight.dtype in (x.dtype, torch.float32):
        return weight.dtype  # (narrower activations over fp32 weights compute in fp32)
    if x.device.type != "cpu":
        return torch.bfloat16
    return torch.bfloat16 if _fast_bf16_gemm() else torch.float32


def linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
           row_index: torch.Tensor | None = None, block_cols: int = 128) -> torch.Tensor:
    """``x @ weight.T`` over the last dimension, in ``x``'s dtype whatever the weight is held in. An FP8
    ``weight`` comes with its block scales (``scale``: the checkpoint's ``weight_scale_inv``, ``row_index``:
    each row's scale row). A few rows (a decode step) go through the decode kernels, which read bf16 or FP8
    weights as they are and sum in fp32; more rows (prefill) multiply in :func:`gemm_dtype`, the weight
    converted (FP8: dequantized) for this one product."""
    rows = x.numel() // max(1, x.shape[-1])
    if weight.dtype == FP8:
        if scale is None or row_index is None:
            raise ValueError("an FP8 weight needs its block scales (weight_scale_inv) and their row index")
        if 0 < rows <= kernel_rows(x, weight) and kernels.ready_fp8(x, weight):
            y = torch.ops.mimo.linear_decode_fp8(x.reshape(rows, x.shape[-1]), weight, scale, row_index, block_cols)
            return y.view(*x.shape[:-1], weight.shape[0])
        dt = gemm_dtype(x, weight)
        return F.linear(x.to(dt), dequantize(weight, scale, row_index, block_cols, dt)).to(x.dtype)
    if 0 < rows <= kernel_rows(x, weight) and kernels.ready(x, weight):
        y = torch.ops.mimo.linear_decode(x.reshape(rows, x.shape[-1]), weight)
        return y.view(*x.shape[:-1], weight.shape[0])
    if weight.dtype != x.dtype:
        dt = gemm_dtype(x, weight)
        return F.linear(x.to(dt), weight.to(dt)).to(x.dtype)
    return F.linear(x, weight)
