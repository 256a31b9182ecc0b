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
    """``--mtp --dtype --device --max-model-len --prefill-chunk --compile`` (and ``--max-num-seqs`` when the
    command decodes several sequences together)."""
    g = p.add_argument_group("engine")
    g.add_argument("--mtp", type=int, default=0, metavar="K",
                   help="MTP speculative decoding with K draft tokens per step, 0-3 (default 0: off)")
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


def add_compute_dtype(g) -> None:
    g.add_argument("--compute-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="activations' dtype: auto (default) is float32 on a CPU whatever the weights are held in "
                        "(decode reads the same weight bytes; speculative and plain greedy outputs stay identical), "
                        "the weights' dtype on a GPU")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The :class:`EngineConfig` of the parsed options (a ``ValueError`` naming a bad one)."""
    from mimo.engine.config import EngineConfig

    return EngineConfig(num_speculative_tokens=args.mtp, max_num_seqs=getattr(args, "max_num_seqs", 1),
                        max_model_len=args.max_model_len, prefill_chunk=args.prefill_chunk, compile=args.compile,
                        device=args.device)
