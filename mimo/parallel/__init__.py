"""Tensor and expert parallelism over torch.distributed, applied to a single-device model from outside.

* :mod:`mimo.parallel.group`: the process group a model is split over, and its collectives;
* :mod:`mimo.parallel.layers`: the modules a plan swaps in, each with its collective in plain sight;
* :mod:`mimo.parallel.plan`: which parameter is split how, and the :class:`~mimo.checkpoint.slices.Slice`
  each rank loads.

The engine's side (a plan broadcast to every rank each step, worker processes) is
:mod:`mimo.engine.ranks`.
"""

from __future__ import annotations

import os
from typing import Any

from mimo.parallel.group import ParallelGroup
from mimo.parallel.plan import apply_plan

__all__ = ["ParallelGroup", "apply_plan", "load_sharded"]


def load_sharded(path: str | os.PathLike, group: ParallelGroup, **kwargs: Any):
    """This rank's part of the model in ``path``: only its slices are read from the files (``kwargs``: those of
    ``MiMoForCausalLM.from_pretrained``). Every rank of ``group`` calls it."""
    from mimo.checkpoint import MiMoForCausalLM

    return MiMoForCausalLM.from_pretrained(path, shard=lambda model: apply_plan(model, group), **kwargs)
