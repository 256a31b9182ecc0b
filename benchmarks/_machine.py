"""What machine a benchmark ran on: :mod:`mimo.utils.machine`, with the measured read bandwidth."""

from __future__ import annotations

from mimo.utils.machine import cpu_description, cpu_info, matvec_bandwidth, read_bandwidth

__all__ = ["cpu_info", "describe", "matvec_bandwidth", "measured", "read_bandwidth"]


def describe(info: dict) -> str:
    """The CPU line, with the read bandwidth when it was measured."""
    text = cpu_description(info)
    if "read_bandwidth_bytes_per_s" in info:
        text += f", read bandwidth {info['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s"
    return text


def measured() -> dict:
    """:func:`cpu_info` with the read bandwidth measured now, under the key :func:`describe` prints."""
    info = cpu_info()
    info["read_bandwidth_bytes_per_s"] = read_bandwidth()
    return info
