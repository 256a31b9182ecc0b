"""What machine a figure is measured on: CPU model, vector ISA and cores (read from /proc/cpuinfo).

Benchmarks print this beside every figure: the machines mimo runs on differ (AVX-512/AMX Xeons, AVX2-only
EPYCs, ARM) and a speed only means something with the machine it was measured on.
"""

from __future__ import annotations

import os
import platform
import time

_ISA = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "avx_vnni", "asimd", "sve")


def cpu_info() -> dict:
    """``{"cpu", "isa", "vector_isa", "cores"}``; ``isa`` lists the relevant flags the CPU reports."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    isa = [name for name in _ISA if name in flags]
    return {"cpu": model or platform.processor() or platform.machine(), "isa": isa, "vector_isa": _widest(isa),
            "cores": os.cpu_count()}


def _widest(isa: list[str]) -> str:
    if "amx_tile" in isa:
        return "AMX + AVX-512"
    if "avx512f" in isa:
        return "AVX-512"
    if "avx2" in isa:
        return "AVX2"
    if "asimd" in isa:
        return "NEON" + (" + SVE" if "sve" in isa else "")
    return "no vector extension found"


def cpu_description(info: dict | None = None) -> str:
    """One line: ``AMD EPYC 9B14 (AVX-512), 2 cores``."""
    info = info or cpu_info()
    return f"{info['cpu']} ({info['vector_isa']}), {info['cores']} cores"


def device_description(device: str | None = None) -> str:
    """The CPU line, or the accelerator's name and memory when ``device`` is one (with the host CPU after it)."""
    cpu = cpu_description()
    if device is None or not str(device).startswith("cuda"):
        return cpu
    import torch

    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}); host {cpu}"


def read_bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """Bytes/s of a streaming read of an ``mb`` MB fp32 buffer (``torch.sum`` on torch's threads), best of runs.

    This, not a BLAS mat-vec, is the bound memory-bound decode works against: on the 2-core EPYCs here MKL's
    sgemv reads at about 55% of it, while mimo's decode kernels and llama.cpp's come close to all of it."""
    import torch

    w = torch.ones(mb * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        w.sum()
        best = min(best, time.perf_counter() - t)
    return w.numel() * 4 / best


def matvec_bandwidth(mb: int = 256, repeats: int = 5) -> float:
    """Bytes/s read by MKL's mat-vec (``F.linear``) over an ``mb`` MB fp32 matrix (what this project's figures
    before 2026-11-30 were measured against)."""
    import torch
    import torch.nn.functional as F

    w = torch.ones(mb * 2**20 // 4 // 4096, 4096)
    x = torch.ones(1, 4096)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        F.linear(x, w)
        best = min(best, time.perf_counter() - t)
    return w.numel() * 4 / best
