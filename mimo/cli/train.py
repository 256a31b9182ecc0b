"""``mimo train``: pre-train a preset (mimo-nano by default) on the Python standard library.

Options left out take :class:`mimo.training.trainer.TrainConfig`'s defaults, or, with ``--resume``,
the values the run was started with (so ``mimo train --out DIR --resume --max-minutes 30``
continues a run exactly where its last checkpoint left it). ``--continue-from DIR`` starts a new run
directory from an exported model (a run's ``final/``, which carries its ``training_state.json``) with the
settings it was trained with: for runs longer than the life of the machine they run on, where only the small
exported model can be kept (AdamW's moments restart; the schedule and the data stream go on). ``--init-from DIR``
starts a new run from any exported model's weights and tokenizer: a new schedule and this run's own data.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="model preset: nano (default), tiny, bench, flash")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl, training.png, final/)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--continue-from", metavar="DIR",
                   help="start --out from a model that mimo train exported (a run's final/): its step, schedule, data "
                        "position and settings go on, AdamW's moments restart from zero (not bitwise a resume)")
    p.add_argument("--init-from", metavar="DIR",
                   help="start a new run from an exported model's weights and tokenizer (its config is the model's): "
                        "the schedule starts at step 0 and the data stream is this run's own (a warm start)")
    p.add_argument("--rewarm-steps", type=int, help="with --continue-from: steps over which the learning rate ramps "
                   "back up (default 20)")
    p.add_argument("--steps", type=int, help="length of the LR schedule in optimizer steps")
    p.add_argument("--max-minutes", type=float, help="stop cleanly (with a checkpoint) after this many minutes; "
                   "without --steps the schedule is fitted to this budget")
    p.add_argument("--batch-size", type=int, help="sequences per micro-batch (default 16)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default 256)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-3)")
    p.add_argument("--warmup", dest="warmup_steps", type=int, help="warmup steps (default 100)")
    p.add_argument("--mtp-weights", type=_floats, help="loss weight per MTP depth, e.g. 0.3,0.3,0.3")
    p.add_argument("--balance-rate", type=float, help="expert-bias update rate (default 1e-3)")
    p.add_argument("--aux-coef", type=float, help="sequence-wise balance loss coefficient (default 1e-4)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), help="fp32, or bf16 autocast (default fp32)")
    p.add_argument("--attention-backend", choices=("sdpa", "reference"), help="default sdpa")
    p.add_argument("--eval-interval", type=int, help="steps between held-out evaluations (default 200)")
    p.add_argument("--checkpoint-interval", type=int, help="steps between checkpoints (default 500)")
    p.add_argument("--seed", type=int, help="seed for the initial weights and the data order (default 0)")
    p.add_argument("--vocab-size", type=int, help="BPE / model vocabulary size (default: the preset's)")
    p.add_argument("--data-root", help="directory of .py files to train on (default: this Python's stdlib)")
    p.add_argument("--heldout-percent", type=int, help="percent of files held out (default 2)")
    p.add_argument("--synthetic-files", type=int,
                   help="add this many synthetic Python files that can only be predicted by copying earlier text "
                        "(made-up names defined and reused, table lookups; about 2,000 tokens each; default 0)")
    p.add_argument("--split-digits", action="store_true", default=None,
                   help="train the BPE with every digit a token of its own (numbers then copy token for token)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from mimo.training.checkpointing import latest_checkpoint, read_json, read_training_state
    from mimo.training.trainer import TrainConfig, train
    from mimo.utils import runtime

    runtime.configure()

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    settings: dict = {}
    if args.resume:
        ckpt = latest_checkpoint(args.out)
        if ckpt is not None:
            settings = read_json(os.path.join(ckpt, "state.json"))["train_config"]
            print(f"resuming {ckpt}")
    if args.continue_from and args.init_from:
        raise ValueError("--continue-from and --init-from exclude each other: go on with a run's schedule and data, "
                         "or start a new run from a model's weights")
    if args.continue_from and not settings:  # a ValueError here is main's clear error, as for any bad input
        state = read_training_state(args.continue_from)
        settings = state["train_config"]
        print(f"continuing {args.continue_from} (step {state['step']})")
    settings.update(given)
    settings.update(out=args.out, resume=args.resume)
    cfg = TrainConfig.from_dict(settings)
    logging.getLogger("mimo").setLevel(min(logging.getLogger().level, logging.INFO))
    with logging_redirect_tqdm():
        summary = train(cfg)
    held = summary["heldout"]
    held_text = f", held-out loss {held['heldout_loss']:.4f}" if held else ""
    print(f"stopped at step {summary['step']}/{summary['total_steps']} ({summary['stop_reason']}), "
          f"{summary['tokens_seen']:,} tokens in {summary['elapsed_s'] / 60:.1f} min{held_text}")
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"model:      {summary['final']}  (hub layout, bf16, with tokenizer)")
    print(f"metrics:    {os.path.join(cfg.out, 'metrics.jsonl')}, plot: {os.path.join(cfg.out, 'training.png')}")
    return 0
