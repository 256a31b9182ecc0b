"""The engine over a group of ranks: the scheduler on rank 0, a runner on every rank, one plan per step.

Every step, rank 0's :class:`RankZeroRunner` broadcasts the :class:`~mimo.engine.plan.StepPlan` (host data) on
a gloo group, then every rank executes it on its part of the model (:mod:`mimo.parallel`). The layers'
collectives keep the ranks in step; the head's all-gather gives every rank the full logits, so every rank
samples the same tokens: greedy rows trivially, sampled rows because each sequence's generator is seeded
from the plan (rank 0 draws a seed for a request that has none, so all ranks agree on it). Workers (ranks
> 0) only execute: :func:`worker_loop`.

Processes: ``LLM(..., tensor_parallel_size=N)`` starts ranks 1..N-1 itself (:func:`start_workers`, the
``spawn`` start method) and watches them: a worker that dies ends the process with an error, since the group
cannot go on without it. Under torchrun every rank runs the same command; rank 0 serves, the others run
:func:`run_worker` (``mimo.cli`` and ``LLM`` branch to it).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mimo.engine.config import EngineConfig
from mimo.engine.plan import RowResult, StepPlan
from mimo.engine.runner import ModelRunner
from mimo.parallel import ParallelGroup, load_sharded
from mimo.parallel import group as groups

logger = logging.getLogger(__name__)

_STOP = "stop"
IDLE_TIMEOUT_S = 7 * 24 * 3600.0
"""How long a rank waits in one collective: workers wait for the next plan while the server is idle, so this
is long. A dead rank is noticed sooner: its sockets close (the others' collectives fail at once), and the
process that started the workers watches them (:class:`WorkerWatch`); torchrun stops the group itself."""


def control_group() -> dist.ProcessGroup:
    """The group plans travel on: the world when it is gloo, else a gloo group beside NCCL (host objects).
    Every rank calls it once, in the same order."""
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo")


class RankZeroRunner(ModelRunner):
    """Rank 0's runner: sends each plan to the workers, then executes it like every rank."""

    def __init__(self, *args: Any, control: dist.ProcessGroup, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control = control
        self.stopped = False

    def execute(self, plan: StepPlan) -> dict[int, RowResult]:
        if plan.starts and any(s.seed is None for s in plan.starts):
            # A request without a seed draws from this process's generator, which the workers do not share:
            # give its generator a seed drawn here, the same on every rank.
            plan = dataclasses.replace(plan, starts=[
                s if s.seed is not None else dataclasses.replace(s, seed=int(torch.randint(0, 2**63 - 1, ())))
                for s in plan.starts])
        dist.broadcast_object_list([plan], src=0, group=self.control)
        results = super().execute(plan)
        if checking():
            check_agreement(results, self.control)
        return results

    def stop(self) -> None:
        """Tell the workers to return from :func:`worker_loop`."""
        if not self.stopped:
            self.stopped = True
            dist.broadcast_object_list([_STOP], src=0, group=self.control)


def worker_loop(runner: ModelRunner, control: dist.ProcessGroup) -> None:
    """A worker rank: execute every plan rank 0 broadcasts, until it says stop."""
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=control)
        if box[0] == _STOP:
            return
        results = runner.execute(box[0])
        if checking():
            check_agreement(results, control)


def checking() -> bool:
    """``MIMO_CHECK_RANKS=1`` (set before the workers start, so that every rank sees it): after every step the
    ranks compare the tokens they produced (one small collective per step); a difference is an error."""
    return os.environ.get("MIMO_CHECK_RANKS", "0") == "1"


def check_agreement(results: dict[int, RowResult], control: dist.ProcessGroup) -> None:
    """Raise unless every rank produced the same tokens this step."""
    mine = sorted((slot, r.tokens, r.accepted) for slot, r in results.items())
    everyone: list[Any] = [None] * dist.get_world_size(control)
    dist.all_gather_object(everyone, mine, group=control)
    if any(other != everyone[0] for other in everyone):
        raise RuntimeError(f"the ranks produced different tokens in one step: {everyone}")


@dataclass(frozen=True)
class RankSpec:
    """Everything a rank needs to build its part of the model and its runner, the same on every rank."""

    path: str
    dtype: str
    compute_dtype: str
    attention_backend: str
    mmap: bool
    config: EngineConfig
    max_model_len: int


def load_rank(spec: RankSpec, pg: ParallelGroup):
    """This rank's part of the model, prepared for inference."""
    from mimo.engine.llm import prepare_for_inference

    model = load_sharded(spec.path, pg, dtype=spec.dtype, mmap=spec.mmap)
    device = groups.rank_device(spec.config.device, pg.rank)
    if device is not None:
        model.to(device)
    return prepare_for_inference(model, spec.attention_backend, spec.compute_dtype)


def run_worker(spec: RankSpec, rank: int, world: int) -> None:
    """A worker's whole life once the process group exists: load its part, then execute plans until told to
    stop."""
    pg = rank_group(spec, rank, world)
    control = control_group()
    model = load_rank(spec, pg)
    runner = ModelRunner(model, spec.config, spec.max_model_len)
    worker_loop(runner, control)


def _worker_main(rank: int, world: int, port: int, backend: str, threads: int, spec: RankSpec) -> None:
    """Entry of a worker process started by :func:`start_workers`."""
    from mimo.utils import runtime

    runtime.configure(threads=threads)
    groups.init(rank, world, backend, port, timeout_s=IDLE_TIMEOUT_S,
                device=groups.rank_device(spec.config.device, rank))
    try:
        run_worker(spec, rank, world)
    except KeyboardInterrupt:
        pass  # Ctrl-C reached every process of the terminal: rank 0 reports it
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def threads_per_rank(world: int) -> int:
    """CPU threads for each of ``world`` ranks on this host: the cores shared out."""
    return max(1, (os.cpu_count() or 1) // world)


def start_workers(world: int, port: int, backend: str, spec: RankSpec) -> list[multiprocessing.Process]:
    """Ranks 1..world-1 as processes of this host (``spawn``: each imports mimo afresh, nothing is inherited)."""
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for rank in range(1, world):
        p = ctx.Process(target=_worker_main, args=(rank, world, port, backend, threads_per_rank(world), spec),
                        name=f"mimo-rank-{rank}", daemon=True)
        p.start()
        procs.append(p)
    return procs


class WorkerWatch:
    """Watches the worker processes this process started. One that exits while the group is in use ends this
    process too, with an error naming it: the others would wait for it forever or fail one by one."""

    def __init__(self, procs: list[multiprocessing.Process], interval_s: float = 0.5) -> None:
        self.procs = procs
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._watch, args=(interval_s,), name="mimo-worker-watch", daemon=True)
        self.thread.start()

    def _watch(self, interval_s: float) -> None:
        while not self.closing.wait(interval_s):
            for rank, p in enumerate(self.procs, start=1):
                if p.exitcode is not None and not self.closing.is_set():
                    print(f"mimo: rank {rank} (pid {p.pid}) exited with code {p.exitcode}; the model is split over "
                          "every rank, so this process stops too", file=sys.stderr, flush=True)
                    os._exit(1)

    def close(self, timeout_s: float = 10.0) -> None:
        """The workers are being stopped on purpose: stop watching, and wait for them."""
        self.closing.set()
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()


def launch(world: int, spec: RankSpec) -> tuple[ParallelGroup, dist.ProcessGroup, WorkerWatch | None]:
    """Make this process rank 0 of a group of ``world``: under torchrun, join the group it set up; otherwise
    start the other ranks here. Returns this rank's group, the control group and the watch over started
    workers (None under torchrun)."""
    env = groups.from_environment()
    backend = groups.backend_for(spec.config.device or "cpu")
    watch = None
    if env is not None:
        rank, size = env
        if size != world:
            raise ValueError(f"tensor_parallel_size={world}, but the launcher started {size} processes")
        if rank != 0:
            raise RuntimeError("launch() is rank 0's; other ranks run run_worker()")
        groups.init(0, size, backend, timeout_s=IDLE_TIMEOUT_S, device=groups.rank_device(spec.config.device, 0))
    else:
        port = groups.free_port()
        procs = start_workers(world, port, backend, spec)
        watch = WorkerWatch(procs)
        groups.init(0, world, backend, port, timeout_s=IDLE_TIMEOUT_S, device=groups.rank_device(spec.config.device, 0))
    return rank_group(spec, 0, world), control_group(), watch


def rank_group(spec: RankSpec, rank: int, world: int) -> ParallelGroup:
    return ParallelGroup(rank, world, ep=spec.config.enable_expert_parallel,
                         all_to_all_from=spec.config.expert_all_to_all_from)
