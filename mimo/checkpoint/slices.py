"""Which part of a checkpoint tensor a parameter holds: what a tensor- or expert-parallel rank loads.

A parallel plan (:mod:`mimo.parallel.plan`) describes each sharded parameter with a :class:`Slice` and the
loader reads only that part from the files, so a rank never holds more than its shard.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Slice:
    """``[start, stop)`` along ``dim`` of the hub tensor (for routed experts: of each expert's 2-D tensor), and,
    for a stacked expert parameter, the experts held (``experts``; their local index is their place in it).
    ``dim=None``: the whole tensor (only ``experts`` narrows it)."""

    dim: int | None = None
    start: int = 0
    stop: int = 0
    experts: range | None = None

    def __post_init__(self) -> None:
        if self.dim is not None and not 0 <= self.start < self.stop:
            raise ValueError(f"a slice needs 0 <= start < stop, got [{self.start}, {self.stop})")

    @property
    def size(self) -> int:
        return self.stop - self.start

    def local_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The held shape of a tensor whose full (per-expert) shape is ``shape``."""
        if self.dim is None:
            return tuple(shape)
        out = list(shape)
        out[self.dim] = self.size
        return tuple(out)
