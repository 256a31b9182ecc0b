"""The group of processes a model is split over, and the collectives its layers call.

Collectives go through ``torch.distributed._functional_collectives`` (they trace under torch.compile and run
eagerly on gloo and NCCL alike). gloo serves CPUs, NCCL GPUs; the backend follows the device.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

# torch 2.13 renamed all_gather_tensor to all_gather_single (the old name warns); one name for both.
_all_gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor


@dataclass(frozen=True)
class ParallelGroup:
    """This process's place in a group of ``size`` ranks that split one model: attention, dense MLPs and the
    vocabulary by tensor parallelism (``tp``; else each rank holds them whole and computes the same), the
    routed experts by expert (``ep``) or, with ``tp`` alone, by their intermediate size."""

    rank: int
    size: int
    ep: bool = False
    tp: bool = True
    group: dist.ProcessGroup | None = None  # None: the default (world) group
    # EP: steps of at least this many tokens send each assignment to its expert's rank by all-to-all; smaller
    # ones (and None: all) sum partial outputs with one all-reduce (mimo.parallel.layers.ParallelExperts)
    all_to_all_from: int | None = None

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"rank {self.rank} of {self.size} is not a place in a group")
        if not (self.tp or self.ep):
            raise ValueError("a parallel group splits something: tensor parallelism, expert parallelism or both")

    @property
    def pg(self) -> dist.ProcessGroup:
        return self.group or dist.group.WORLD

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks (each holds a partial sum)."""
        return funcol.all_reduce(x, "sum", self.pg)

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's ``x`` side by side along ``dim`` (rank order)."""
        return _all_gather(x.contiguous(), dim % x.ndim, self.pg)


def backend_for(device: torch.device | str) -> str:
    """NCCL for CUDA devices, gloo otherwise (a CPU-only torch has no NCCL)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def free_port() -> int:
    """A TCP port free on this host now (for a rendezvous of processes this process starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_device(device: torch.device | str | None, rank: int) -> torch.device | None:
    """The device a rank's part of the model runs on. ``cuda`` without an index means the GPU of the rank's
    index on its host: ``LOCAL_RANK`` under torchrun, else the rank (ranks started by mimo are all on one
    host). Any other device is taken as given."""
    if device is None:
        return None
    d = torch.device(device)
    if d.type != "cuda" or d.index is not None:
        return d
    local = int(os.environ.get("LOCAL_RANK", rank))
    count = torch.cuda.device_count()
    if local >= count:
        raise ValueError(f"rank {rank} runs on GPU {local} of its host, but this host has {count} GPU(s): start "
                         "at most one rank per GPU")
    return torch.device("cuda", local)


def init(rank: int, world_size: int, backend: str, master_port: int | None = None,
         timeout_s: float = 600.0, device: torch.device | None = None) -> None:
    """Join (or form) the default process group: an entry point's call, once per process. With ``master_port``
    the rendezvous is on this host (processes started by :mod:`mimo.engine.ranks`); without, torchrun's
    environment (``MASTER_ADDR``, ``MASTER_PORT``) says where. A rank that does not answer within ``timeout_s``
    fails the others' collectives instead of hanging them. With a CUDA ``device`` (:func:`rank_device`), it
    becomes this process's current device and NCCL's device for the group (set once, here, by the entry point)."""
    if dist.is_initialized():
        return
    if master_port is not None:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(master_port)
    extra = {}
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)
        extra["device_id"] = device
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s),
                            **extra)


def from_environment() -> tuple[int, int] | None:
    """``(rank, world size)`` when this process was started by torchrun (or another launcher setting
    ``RANK``/``WORLD_SIZE``) into a group of more than one process; else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world
