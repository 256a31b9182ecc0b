"""``mimo mopd``: multi-teacher on-policy distillation (MiMo-V2-Flash Sec. 4.4) of a chat student.

``--teacher DOMAIN=DIR`` (repeatable) names the teacher of one verifiable domain (``tools``, ``arithmetic``,
``code``); prompts are drawn from the train splits of those domains only, under ``--prompts`` (what
``mimo.posttrain.domains.write_domains`` wrote). Options left out take
:class:`mimo.posttrain.mopd_train.MOPDConfig`'s defaults or, with ``--resume``, the values the run was started
with (teachers included, unless given again). ``--kl-weight 0 --domains arithmetic,code`` drops the teachers'
term: the same loop with the outcome reward alone (GRPO with truncated importance weights), the baseline the
paper's Fig. 6 compares MOPD with.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os


def parse_teachers(pairs: list[str]) -> dict[str, str]:
    """``["code=DIR", ...]`` -> ``{"code": DIR}``; a bad pair, an unknown domain, a repeated domain or a missing
    directory is a ``ValueError`` that names it."""
    from mimo.posttrain.domains import DOMAINS

    out: dict[str, str] = {}
    for pair in pairs:
        dom, sep, path = pair.partition("=")
        dom, path = dom.strip(), path.strip()
        if not sep or not dom or not path:
            raise ValueError(f"--teacher {pair!r}: expected DOMAIN=DIR (domains: {', '.join(DOMAINS)})")
        if dom not in DOMAINS:
            raise ValueError(f"--teacher {pair!r}: unknown domain {dom!r}; domains are {', '.join(DOMAINS)}")
        if dom in out:
            raise ValueError(f"--teacher {pair!r}: the {dom} domain already has a teacher ({out[dom]})")
        if not os.path.isdir(path):
            raise ValueError(f"--teacher {pair!r}: {path} is not a directory")
        out[dom] = path
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student", help="the model to train (a chat model: an SFT run's final/; default: models/mimo-nano)")
    p.add_argument("--teacher", action="append", default=[], metavar="DOMAIN=DIR",
                   help="the teacher of one domain (tools, arithmetic, code); repeat per domain")
    p.add_argument("--prompts", help="the domains' data directory (DOMAIN/train.jsonl)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl, final/)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--steps", type=int, help="optimizer steps (default 50)")
    p.add_argument("--prompts-per-step", type=int, help="prompts per step, domains in turn (default 6)")
    p.add_argument("--samples-per-prompt", type=int, help="answers sampled per prompt: the GRPO group (default 4)")
    p.add_argument("--max-new-tokens", type=int, help="tokens per answer at most (default 256)")
    p.add_argument("--temperature", type=float, help="rollout temperature (default 1.0: on-policy)")
    p.add_argument("--lr", type=float, help="learning rate, constant (default 2e-5)")
    p.add_argument("--alpha", type=float, help="weight of the outcome-reward (GRPO) advantage (default 1.0; 0: "
                   "distillation only)")
    p.add_argument("--kl-weight", type=float, help="weight of the distillation (teacher) term (default 1.0; 0: "
                   "outcome reward only, GRPO with the same truncated importance weights, no teacher needed)")
    p.add_argument("--domains", type=lambda v: [d.strip() for d in v.split(",") if d.strip()],
                   help="comma-separated domains to draw prompts from (default: the teachers'; needed with "
                   "--kl-weight 0 and no teacher)")
    p.add_argument("--eps-low", type=float, help="IS ratio below which a token is dropped (default 0.5)")
    p.add_argument("--eps-high", type=float, help="IS ratio above which a token is dropped (default 2.0)")
    p.add_argument("--r3", action="store_true", default=None, help="rollout routing replay: the trainer's forward "
                   "uses the experts the engine chose")
    p.add_argument("--micro-batch", type=int, help="rows per forward; gradients accumulate (default 8)")
    p.add_argument("--seed", type=int, help="prompt and sampling seed (default 0)")
    p.add_argument("--checkpoint-interval", type=int, help="steps between checkpoints (default 10)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), help="the student's and teachers' forwards: fp32, or bf16 "
                   "autocast over fp32 weights (faster where the CPU has AVX512-BF16 or AMX; default fp32)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from mimo.posttrain.mopd_train import MOPDConfig, train_mopd
    from mimo.training.checkpointing import latest_checkpoint, read_json
    from mimo.utils import runtime
    from mimo.utils.paths import resolve_model_dir

    fields = {f.name for f in dataclasses.fields(MOPDConfig)}
    settings: dict = {}
    if args.resume and (ckpt := latest_checkpoint(args.out)) is not None:
        settings = read_json(os.path.join(ckpt, "state.json"))["mopd_config"]
        print(f"resuming {ckpt}")
    settings.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    if args.teacher:
        settings["teachers"] = parse_teachers(args.teacher)
    settings.setdefault("teachers", {})
    if settings.get("kl_weight", 1.0) and not settings["teachers"]:
        raise ValueError("at least one --teacher DOMAIN=DIR is required (domains: tools, arithmetic, code), unless "
                         "--kl-weight 0 with --domains")
    if "prompts" not in settings:
        raise ValueError("--prompts is required (the directory mimo.posttrain.domains.write_domains wrote)")
    settings.setdefault("student", str(resolve_model_dir(None)))
    settings.update(out=args.out, resume=args.resume)
    runtime.configure()
    cfg = MOPDConfig(**settings)
    logging.getLogger("mimo").setLevel(min(logging.getLogger().level, logging.INFO))
    with logging_redirect_tqdm():
        summary = train_mopd(cfg)
    last = summary["last"]
    print(f"stopped at step {summary['step']}/{summary['steps']} in {summary['elapsed_s'] / 60:.1f} min"
          + (f"; last reverse KL {last['reverse_kl']:.4f}" if last and last["reverse_kl"] is not None else "")
          + (f"; rewards {last['reward']}" if last else ""))
    print(f"model:   {summary['final']}  (hub layout, bf16, with tokenizer and chat template)")
    print(f"metrics: {os.path.join(cfg.out, 'metrics.jsonl')}")
    return 0
