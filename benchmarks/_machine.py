"""What machine a benchmark ran on: :mod:`mimo.utils.machine` plus the measured read bandwidth."""

from __future__ import annotations

import time

from mimo.utils.machine import cpu_description, cpu_info

__all__ = ["cpu_info", "describe", "read_bandwidth"]


def read_bandwidth(mb: int = 256, repeats: int = 5) -> float:
    """Bytes/s read by a matrix-vector product over an ``mb`` MB fp32 matrix (what decode does), best of runs."""
    import torch
    import torch.nn.functional as F

    w = torch.randn(mb * 2**20 // 4 // 4096, 4096)
    x = torch.randn(1, 4096)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        F.linear(x, w)
        best = min(best, time.perf_counter() - t)
    return w.numel() * 4 / best


def describe(info: dict) -> str:
    """The CPU line, with the read bandwidth when it was measured."""
    text = cpu_description(info)
    if "read_bandwidth_bytes_per_s" in info:
        text += f", read bandwidth {info['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s"
    return text
