"""``mimo domains``: write the post-training data of the three verifiable domains (tools, arithmetic, code).

Generated here from the standard library and a few templates, nothing downloaded, deterministic in
``(--seed, --train, --heldout)`` and the Python version (recorded in ``manifest.json``). Splits are by family:
held-out families (tool modules, problem templates, task kinds) never occur in ``train``. ``mimo sft --data``
and ``mimo mopd --prompts`` read the directory; ``scripts/eval_domains.py`` and
``scripts/eval_tools_openai.py`` score the held-out split.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="directory to write (DIR/<domain>/<split>.jsonl, DIR/manifest.json)")
    p.add_argument("--train", type=int, default=1200, help="examples per domain in the train split (default 1200)")
    p.add_argument("--heldout", type=int, default=300, help="examples per domain in the held-out split (default 300)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite a directory that already holds a manifest")


def run(args: argparse.Namespace) -> int:
    from mimo.posttrain.domains import write_domains

    if args.train < 1 or args.heldout < 1:
        raise ValueError(f"--train and --heldout must be positive, got {args.train} and {args.heldout}")
    if os.path.exists(os.path.join(args.out, "manifest.json")) and not args.force:
        raise ValueError(f"{args.out} already holds domain data (manifest.json): choose another --out or pass --force")
    manifest = write_domains(args.out, seed=args.seed, counts={"train": args.train, "heldout": args.heldout})
    for domain, splits in manifest["domains"].items():
        print(f"{domain:<11} " + "  ".join(f"{split} {info['count']} ({len(info['families'])} families)"
                                           for split, info in splits.items()))
    print(f"written: {os.path.abspath(args.out)} (seed {args.seed}, Python {manifest['python']})")
    return 0
