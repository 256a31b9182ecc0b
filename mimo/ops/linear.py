"""Bias-free linear maps of the inference paths: ``F.linear``, or mimo's decode kernel for a few rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mimo.ops import kernels

DECODE_ROWS = 8
"""Up to this many input rows (a decode step's batch), fp32 or bf16 on a CPU without autograd, take
``torch.ops.mimo.linear_decode``, which streams the weights faster than MKL's GEMM does for so few rows
(benchmarks/README.md, "Why the code is the way it is")."""


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` over the last dimension."""
    rows = x.numel() // max(1, x.shape[-1])
    if 0 < rows <= DECODE_ROWS and kernels.ready(x, weight):
        y = torch.ops.mimo.linear_decode(x.reshape(rows, x.shape[-1]), weight)
        return y.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight)
