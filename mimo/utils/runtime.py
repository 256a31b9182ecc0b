"""Process-wide settings, set once by an entry point (the ``mimo`` command, ``LLM``), never by a constructor.

What they are for:

* flushing subnormal floats to zero: peaked softmaxes (and their backward) produce subnormals, which x86
  CPUs handle in microcode, slowing steps down many times over (benchmarks/README.md);
* keeping freed memory in the heap (:mod:`mimo.utils.malloc`): large activations are reused instead of
  being page-faulted in again every step;
* the number of torch threads, when asked.

:func:`configure` returns the previous settings, so a caller that wants them back can :func:`restore` them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimo.utils.malloc import keep_freed_memory


@dataclass(frozen=True)
class Settings:
    flush_denormal: bool
    threads: int


def current() -> Settings:
    """The settings in force now. (torch cannot report denormal flushing; it is tracked here.)"""
    return Settings(_flushing, torch.get_num_threads())


_flushing = False


def configure(*, flush_denormal: bool = True, reuse_memory: bool = True, threads: int | None = None) -> Settings:
    """Set the process for inference or training; returns what was in force before."""
    global _flushing
    before = current()
    if torch.set_flush_denormal(flush_denormal):  # False where the CPU cannot (then nothing changed)
        _flushing = flush_denormal
    if reuse_memory:
        keep_freed_memory()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return before


def restore(settings: Settings) -> None:
    """Put back what :func:`configure` returned (memory reuse, once on, stays on: it only affects speed)."""
    configure(flush_denormal=settings.flush_denormal, reuse_memory=False, threads=settings.threads)
