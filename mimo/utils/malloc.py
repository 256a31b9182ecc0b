"""Keep freed memory in the process heap instead of returning it to the OS (glibc only).

glibc serves allocations above 128 KiB with fresh ``mmap`` pages and unmaps them on free, so
every activation of a prefill chunk or a batched step is page-faulted and zeroed by the kernel
again, step after step (benchmarks/README.md has the cost it measured). Raising the mmap
and trim thresholds (``mallopt``) lets freed blocks be reused, as jemalloc/tcmalloc would.
Process-wide and idempotent; a no-op where glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Allocations below ``mmap_threshold`` come from the reusable heap; up to ``trim_threshold``
    bytes of free heap are kept. Returns whether glibc took the settings."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _done = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return _done
