"""RMSNorm (as transformers' ``MiMoV2FlashRMSNorm``): normalise in fp32, cast back, then scale in the input dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mimo.ops import kernels


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if kernels.ready_norm(x, weight):  # eager inference on a CPU: one C++ call, the same arithmetic
        return torch.ops.mimo.rms_norm(x, weight, eps)
    if x.dtype == torch.float32:  # one call instead of five; the same arithmetic in fp32 (a weight held
        return F.rms_norm(x, (x.shape[-1],), weight.float(), eps)  # narrower is exact in fp32)
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)
