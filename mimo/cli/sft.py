"""``mimo sft``: supervised fine-tuning on chat examples, the loss on the assistant's tokens only.

``--data`` is a JSONL file of chat examples (``messages``, optional ``tools`` and ``chat_template_kwargs``)
or a directory searched for ``train*.jsonl`` (what ``mimo.posttrain.domains.write_domains`` writes). Options
left out take :class:`mimo.posttrain.sft.SFTConfig`'s defaults (the paper's SFT settings scaled to nano), or,
with ``--resume`` or ``--continue-from``, the values the run was started with (``--continue-from`` goes on
from a run's exported ``final/`` when its checkpoints are gone: see :mod:`mimo.posttrain.sft`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="JSONL file of chat examples, or a directory of train*.jsonl files")
    p.add_argument("--from", dest="init", help="the model to fine-tune (a directory with its tokenizer and chat "
                   "template; default: the shipped models/mimo-nano)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl, final/)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--continue-from", help="go on from a run's exported final/ (its training_state.json: step, "
                   "data position, settings), into a new --out, with AdamW's moments restarted")
    p.add_argument("--rewarm-steps", type=int, help="with --continue-from: steps over which the learning rate ramps "
                   "back up (default 10)")
    p.add_argument("--steps", type=int, help="optimizer steps (default 300)")
    p.add_argument("--batch-size", type=int, help="conversations per step (default 16)")
    p.add_argument("--max-len", type=int, help="tokens per conversation; longer ones are left out (default 512)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-4, decaying 10x)")
    p.add_argument("--seed", type=int, help="data order seed (default 0)")
    p.add_argument("--checkpoint-interval", type=int, help="steps between checkpoints (default 50)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), help="compute dtype: fp32, or bf16 autocast over fp32 "
                   "master weights (~1.5x faster where the CPU has AVX512-BF16 or AMX; default fp32)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from mimo.posttrain.sft import SFTConfig, train_sft
    from mimo.training.checkpointing import latest_checkpoint, read_json, read_training_state
    from mimo.utils import runtime
    from mimo.utils.paths import resolve_model_dir

    runtime.configure()
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    settings: dict = {}
    if args.resume and (ckpt := latest_checkpoint(args.out)) is not None:
        settings = read_json(os.path.join(ckpt, "state.json"))["sft_config"]
        print(f"resuming {ckpt}")
    if args.continue_from and not settings:  # a ValueError here is main's clear error, as for any bad input
        state = read_training_state(args.continue_from)
        settings = state["sft_config"]
        print(f"continuing {args.continue_from} (step {state['step']})")
    settings.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    if "data" not in settings:
        raise ValueError("--data is required (a JSONL file of chat examples or a directory of train*.jsonl)")
    settings.setdefault("init", str(resolve_model_dir(None)))
    settings.update(out=args.out, resume=args.resume)
    if "mtp_weights" in settings:
        settings["mtp_weights"] = tuple(settings["mtp_weights"])
    cfg = SFTConfig(**settings)
    logging.getLogger("mimo").setLevel(min(logging.getLogger().level, logging.INFO))
    with logging_redirect_tqdm():
        summary = train_sft(cfg)
    last = summary["last"]
    print(f"stopped at step {summary['step']}/{summary['steps']} on {summary['rows']} conversations "
          f"({summary['dropped']} longer than {cfg.max_len} tokens left out) in {summary['elapsed_s'] / 60:.1f} min"
          + (f"; last loss {last['main_loss']:.4f}" if last else ""))
    print(f"model:   {summary['final']}  (hub layout, bf16, with tokenizer and chat template)")
    print(f"metrics: {os.path.join(cfg.out, 'metrics.jsonl')}")
    return 0
