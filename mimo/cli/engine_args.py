"""The engine options that ``generate`` and ``serve`` share, and the :class:`EngineConfig` they make.

One definition of each option (name, default, help) and one place that turns them into an
``EngineConfig``, so the commands, ``LLM`` and the server agree on what a setting means.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mimo.engine.config import EngineConfig


def add_engine_arguments(p: argparse.ArgumentParser, *, batch: bool) -> None:
    """``--mtp --speculative-policy --dtype --device --max-model-len --prefill-chunk --compile --tensor-parallel-size
    --enable-expert-parallel`` (and ``--max-num-seqs`` when the command decodes several sequences together)."""
    g = p.add_argument_group("engine")
    g.add_argument("--mtp", type=int, default=0, metavar="K",
                   help="MTP speculative decoding with K draft tokens per step, 0-3 (default 0: off)")
    add_speculative_policy(g)
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights dtype: auto (default) keeps each tensor as stored (FP8 stays FP8, bf16 bf16); "
                        "float32 or bfloat16 convert them")
    add_compute_dtype(g)
    g.add_argument("--no-mmap", dest="mmap", action="store_false",
                   help="copy the weights into memory instead of mapping the files (pages then stay resident)")
    g.add_argument("--device", default=None, help="where the model runs, e.g. cpu or cuda (default: cpu)")
    g.add_argument("--max-model-len", type=int, help="context length: prompt + completion tokens (default: the model's)")
    g.add_argument("--prefill-chunk", type=int, default=512,
                   help="prompt tokens prefilled per step, over all waiting prompts (default 512)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step: faster tokens after a one-time compile (tens of seconds on "
                        "a CPU; the first requests wait for it). MTP drafting stays eager, so on a CPU --compile "
                        "without --mtp is usually fastest (benchmarks/README.md, 'MTP at batch 1 on a CPU')")
    if batch:
        g.add_argument("--max-num-seqs", type=int, default=16, help="sequences decoded together (default 16)")
    g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, metavar="N",
                   help="split the model over N processes (tensor parallelism over torch.distributed: gloo on CPUs, "
                        "NCCL on GPUs); started here, or by torchrun, which sets the group (default 1)")
    g.add_argument("--enable-expert-parallel", action="store_true",
                   help="with --tensor-parallel-size: split the routed experts by expert instead of by size")


def add_speculative_policy(g) -> None:
    g.add_argument("--speculative-policy", default="adaptive", choices=["adaptive", "fixed"],
                   help="with --mtp K: adaptive (default) drafts 0..K per step, whichever the measured step times "
                        "and each request's acceptance say gives most tokens/s; fixed always drafts K. Output is "
                        "the same either way (greedy: identical; sampling: the same distribution)")


def add_compute_dtype(g) -> None:
    g.add_argument("--compute-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="activations' dtype: auto (default) is float32 on a CPU whatever the weights are held in "
                        "(decode reads the same weight bytes; speculative and plain greedy outputs stay identical), "
                        "the weights' dtype on a GPU")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The :class:`EngineConfig` of the parsed options (a ``ValueError`` naming a bad one)."""
    from mimo.engine.config import EngineConfig

    return EngineConfig(num_speculative_tokens=args.mtp, speculative_policy=args.speculative_policy,
                        max_num_seqs=getattr(args, "max_num_seqs", 1),
                        max_model_len=args.max_model_len, prefill_chunk=args.prefill_chunk, compile=args.compile,
                        device=args.device, tensor_parallel_size=_tp_size(args),
                        enable_expert_parallel=args.enable_expert_parallel)


def _tp_size(args: argparse.Namespace) -> int:
    """``--tensor-parallel-size``; under torchrun without it, the launcher's world size."""
    from mimo.parallel.group import from_environment

    env = from_environment()
    if env is not None and args.tensor_parallel_size == 1:
        return env[1]
    return args.tensor_parallel_size


def worker_rank() -> bool:
    """Whether this process is a worker of a torchrun group (rank > 0): it serves rank 0's plans, nothing else
    (no port, no output)."""
    from mimo.parallel.group import from_environment

    env = from_environment()
    return env is not None and env[0] != 0


def run_worker(args: argparse.Namespace, path: str) -> int:
    """A torchrun worker's part of ``generate``/``serve``/``bench``: build the same LLM, which serves as this rank
    until rank 0 stops and then exits the process."""
    from mimo.engine.llm import LLM

    LLM(path, dtype=args.dtype, compute_dtype=args.compute_dtype, mmap=args.mmap, engine_config=engine_config(args))
    return 0
