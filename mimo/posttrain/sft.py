"""Supervised fine-tuning (``mimo sft``): a model trained on chat examples, loss on the assistant's tokens only.

The paper's general SFT (Sec. 4.1): learning rate 5e-5 decaying to 5e-6, batch 128, AdamW ε 1e-8,
expert-bias update rate 1e-4, sequence-wise balance coefficient 1e-6. Scaled to nano: the same 10x decay
and ε, bias rate and balance coefficient, a peak of 2e-4 (nano pre-trains at 2e-3; the release's SFT peak
is likewise an order below its pre-training peak) and batches of 16 conversations. The MTP losses stay
(weights 0.3 per depth, as in pre-training), so the blocks keep drafting for the chat model.

Rows are single conversations, right-padded (see :mod:`mimo.posttrain.sft_data` for why not packed) and
batched with others of similar length; rows longer than ``max_len`` tokens are left out and counted.
Resume is exact: the checkpoint holds the fp32 weights, the optimizer, the data order's position and every
generator, so a run stopped and resumed ends with the weights of an uninterrupted one. ``final/`` also carries
the run's ``training_state.json`` (step, data position, RNG states, settings, the data's fingerprint), so a run
whose checkpoints are lost (a machine that keeps only what is committed) goes on from its exported model with
``continue_from``: every batch is the one the uninterrupted run would have drawn; AdamW's moments restart from
zero, with the learning rate re-warmed over ``rewarm_steps``, as ``mimo train --continue-from`` does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import MISSING, asdict, dataclass, fields

import numpy as np
import torch
from tqdm.auto import tqdm

from mimo.checkpoint import MiMoForCausalLM
from mimo.posttrain.sft_data import SFTRow, to_row
from mimo.tokenizer import Tokenizer
from mimo.training.balance import update_expert_bias
from mimo.training.checkpointing import (
    export_final,
    latest_checkpoint,
    load_optimizer,
    read_json,
    read_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mimo.training.loss import LossConfig, compute_losses
from mimo.training.optim import WarmupCosine, build_optimizer, clip_gradients, rewarm_factor
from mimo.training.trainer import truncate_metrics

logger = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    data: str  # a JSONL file of chat examples, or a directory searched for train*.jsonl files
    init: str  # the model to start from (a directory with tokenizer and chat template)
    out: str
    steps: int = 300
    batch_size: int = 16
    max_len: int = 512  # tokens per conversation; longer ones are left out
    lr: float = 2e-4
    min_lr_ratio: float = 0.1  # the paper's 5e-5 -> 5e-6
    warmup_steps: int = 10
    weight_decay: float = 0.1
    eps: float = 1e-8
    grad_clip: float = 1.0
    mtp_weights: tuple[float, ...] = (0.3, 0.3, 0.3)
    aux_coef: float = 1e-6
    balance_rate: float = 1e-4
    seed: int = 0
    checkpoint_interval: int = 50
    keep_checkpoints: int = 2
    dtype: str = "fp32"  # fp32 | bf16 (autocast over fp32 master weights, as pre-training's --dtype bf16)
    resume: bool = False
    progress: bool = True
    continue_from: str | None = None  # a final/ directory with training_state.json (see the module docstring)
    rewarm_steps: int = 10  # lr ramp after continue_from (AdamW's moments restart from zero)

    def __post_init__(self) -> None:
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be 'fp32' or 'bf16', got {self.dtype!r}")


def example_files(data: str) -> list[str]:
    if os.path.isfile(data):
        return [data]
    found = sorted(os.path.join(root, f) for root, _, files in os.walk(data) for f in files
                   if f.startswith("train") and f.endswith(".jsonl"))
    if not found:
        raise ValueError(f"no train*.jsonl files under {data} (mimo.posttrain.domains.write_domains writes them)")
    return found


def data_fingerprint(data: str) -> str:
    """sha256 over the example files' names (relative to ``data``) and bytes: a run continues only on its own data."""
    h = hashlib.sha256()
    root = data if os.path.isdir(data) else os.path.dirname(data)
    for path in example_files(data):
        h.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def load_rows(tok: Tokenizer, data: str, max_len: int) -> tuple[list[SFTRow], int]:
    """Every example as a row, and how many were left out for being longer than ``max_len``."""
    rows, dropped = [], 0
    for path in example_files(data):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = to_row(tok, json.loads(line))
                except (ValueError, KeyError) as e:
                    raise ValueError(f"{path}:{n}: {e}") from None
                if len(row.ids) > max_len:
                    dropped += 1
                else:
                    rows.append(row)
    if not rows:
        raise ValueError(f"no usable example in {data} (max_len {max_len})")
    return rows, dropped


class SFTData:
    """Rows in a per-epoch shuffled order, batched by similar length and padded; ``state_dict`` is the exact
    position. Each epoch shuffles the rows, sorts each window of ``BUCKET`` batches' worth by length and cuts
    it into batches, then shuffles the batches: conversations of one batch have similar lengths (tool
    conversations run to ~800 tokens, the others ~150-300; padding would otherwise dominate a mixed batch)."""

    BUCKET = 16  # batches per length-sorted window

    def __init__(self, rows: list[SFTRow], pad_id: int, extra: int, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.rows, self.pad_id, self.extra, self.batch_size, self.seed = rows, pad_id, extra, batch_size, seed
        self.epoch, self.cursor = 0, 0
        self._batches: list[list[int]] | None = None

    def _epoch_batches(self) -> list[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(len(self.rows)).tolist()
        order += order[: (-len(order)) % self.batch_size]  # whole batches: the first rows again at the end
        window = self.BUCKET * self.batch_size
        batches = []
        for w in range(0, len(order), window):
            chunk = sorted(order[w : w + window], key=lambda i: len(self.rows[i].ids))
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, L + extra], loss mask [B, L + extra]): each row padded at its end, where nothing it
        attends to lies and no target is counted."""
        if self._batches is None:
            self._batches = self._epoch_batches()
        if self.cursor >= len(self._batches):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._batches = self._epoch_batches()
        chosen = [self.rows[i] for i in self._batches[self.cursor]]
        self.cursor += 1
        width = max(len(r.ids) for r in chosen) + self.extra
        ids = torch.full((len(chosen), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(chosen), width, dtype=torch.bool)
        for i, r in enumerate(chosen):
            ids[i, : len(r.ids)] = torch.tensor(r.ids)
            mask[i, : len(r.ids)] = torch.tensor(r.loss_mask)
        return ids, mask

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "rows": len(self.rows),
                "batch_size": self.batch_size}

    def load_state_dict(self, s: dict) -> None:
        if (s["rows"], s["seed"], s.get("batch_size")) != (len(self.rows), self.seed, self.batch_size):
            raise ValueError("the data changed since the checkpoint was written: cannot resume exactly")
        self.epoch, self.cursor = s["epoch"], s["cursor"]
        self._batches = None


def _settings(d: dict, continuing: bool = False) -> dict:
    """What must match for a resume to be exact (JSON's view: tuples are lists); a setting newer than the
    checkpoint counts with its default, which is what that run trained with. Where the data and the starting
    model live may differ between machines (the data's fingerprint is checked instead), how often checkpoints
    are written changes nothing trained, and a continued run chooses its own re-warm."""
    d = {**{f.name: f.default for f in fields(SFTConfig) if f.default is not MISSING}, **d}
    skip = {"resume", "progress", "continue_from", "data", "init", "out", "checkpoint_interval", "keep_checkpoints"}
    skip |= {"rewarm_steps"} if continuing else set()
    return {k: v for k, v in json.loads(json.dumps(d)).items() if k not in skip}


def train_sft(cfg: SFTConfig, should_stop=None) -> dict:
    """Run (or resume) SFT as configured; returns a summary. ``should_stop(step)`` ends it after that step
    (with a checkpoint), as an interruption would."""
    start = time.perf_counter()
    os.makedirs(cfg.out, exist_ok=True)
    ckpt = latest_checkpoint(cfg.out)
    if ckpt and not cfg.resume:
        raise ValueError(f"{cfg.out} already holds checkpoints: resume it (--resume) or choose another --out")
    state = read_json(os.path.join(ckpt, "state.json")) if ckpt else {}
    continued = bool(cfg.continue_from) and not ckpt
    if continued:
        state = read_training_state(cfg.continue_from)
    source = ckpt or cfg.continue_from
    theirs, mine = _settings(state.get("sft_config", {}), continued), _settings(asdict(cfg), continued)
    if state and theirs != mine:
        diff = sorted(k for k in mine if theirs.get(k) != mine[k])
        raise ValueError(f"{source} was written with other settings ({', '.join(diff)}); go on with the same ones")
    fingerprint = data_fingerprint(cfg.data)
    if state.get("data_fingerprint", fingerprint) != fingerprint:
        raise ValueError(f"{source} was trained on other data than {cfg.data} (its files' fingerprint differs)")
    tok = Tokenizer.from_pretrained(cfg.continue_from or cfg.init)
    loss_cfg = LossConfig(mtp_weights=tuple(cfg.mtp_weights), aux_coef=cfg.aux_coef)
    rows, dropped = load_rows(tok, cfg.data, cfg.max_len)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    data = SFTData(rows, pad, loss_cfg.extra, cfg.batch_size, cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    start_from = os.path.join(ckpt, "model") if ckpt else cfg.continue_from or cfg.init
    model = MiMoForCausalLM.from_pretrained(start_from, dtype=torch.float32)
    model.train()
    model.set_attention_backend("sdpa")  # rows are right-padded, so plain causal attention is exact for them
    opt = build_optimizer(model, cfg.lr, cfg.weight_decay, eps=cfg.eps)
    step = 0
    if state:
        if ckpt:
            load_optimizer(opt, ckpt)
        data.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        step = state["step"]
        logger.info("%s from %s at step %d", "resumed" if ckpt else "continued", source, step)
    # a continued run's first step, kept in its checkpoints so that resuming it re-warms the same way
    rewarm_from = state.get("rewarm_from", state["step"] if continued else None)
    logger.info("SFT: %d conversations (%d longer than %d tokens left out), %d trained tokens", len(rows),
                dropped, cfg.max_len, sum(r.trained_tokens for r in rows))
    schedule = WarmupCosine(cfg.lr, min(cfg.warmup_steps, max(1, cfg.steps // 10)), cfg.steps, cfg.min_lr_ratio)
    metrics = os.path.join(cfg.out, "metrics.jsonl")
    if state:  # a run killed after its last checkpoint logged steps that the resumed run logs again
        truncate_metrics(metrics, step)
    elif os.path.exists(metrics):
        os.remove(metrics)

    def checkpoint() -> None:
        st = {"step": step, "data": data.state_dict(), "rng": rng_state(), "sft_config": asdict(cfg),
              "data_fingerprint": fingerprint}
        if rewarm_from is not None:
            st["rewarm_from"] = rewarm_from
        save_checkpoint(cfg.out, step, model, opt, st, cfg.keep_checkpoints)
        export_final(cfg.out, model, tok, state={k: v for k, v in st.items() if k != "rewarm_from"})

    last = None
    bar = tqdm(total=cfg.steps, initial=step, unit="step", desc="sft", disable=not cfg.progress, dynamic_ncols=True)
    with open(metrics, "a", encoding="utf-8") as log:
        while step < cfg.steps:
            lr = schedule(step) * rewarm_factor(step, rewarm_from, cfg.rewarm_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            ids, mask = data.next_batch()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.dtype == "bf16"):
                out = compute_losses(model, ids, loss_cfg, loss_mask=mask)
            out["loss"].backward()
            gnorm = clip_gradients(model, cfg.grad_clip)
            if np.isfinite(gnorm):
                opt.step()
                update_expert_bias(model, out["expert_counts"], cfg.balance_rate)
            else:
                logger.warning("step %d: non-finite gradient norm; update skipped", step + 1)
            step += 1
            last = {"step": step, "loss": float(out["loss"].detach()), "main_loss": out["main_loss"],
                    **{k: v for k, v in out.items() if k.startswith("mtp_loss")}, "acc": out["acc"], "lr": lr,
                    "grad_norm": gnorm, "trained_tokens": int(mask.sum()), "elapsed_s": time.perf_counter() - start}
            log.write(json.dumps(last) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{out['main_loss']:.3f}")
            stop = should_stop is not None and should_stop(step)
            if step % cfg.checkpoint_interval == 0 or stop or step == cfg.steps:
                checkpoint()
            if stop:
                break
    bar.close()
    if not os.path.isdir(os.path.join(cfg.out, "final")):
        checkpoint()
    return {"step": step, "steps": cfg.steps, "last": last, "dropped": dropped, "rows": len(rows),
            "final": os.path.join(cfg.out, "final"), "elapsed_s": time.perf_counter() - start}
