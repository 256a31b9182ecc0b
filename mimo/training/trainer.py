"""Pre-training loop for mimo-nano (and any preset): data, model, optimizer, exact checkpoints, metrics, plot.

``train(TrainConfig(...))`` owns one run directory::

    out/tokenizer/            byte-level BPE trained on the training split (reused when present)
    out/cache/                token caches (:mod:`mimo.training.data`)
    out/checkpoints/step-N/   model/ (hub layout, fp32), optimizer.safetensors + optimizer.json, state.json
    out/final/                the model in bf16 hub layout + tokenizer + generation_config.json, and
                              training_state.json (what ``continue_from`` needs, below)
    out/metrics.jsonl         one JSON object per step ("train") and per evaluation ("eval")
    out/training.png          loss, held-out loss, MTP accuracy per depth, expert load balance

Exact resume. A checkpoint holds everything the next step depends on: weights and balancing
biases, AdamW moments, the step (the schedule is a pure function of it), the data position and
the Python/NumPy/torch RNG states. A resumed run therefore produces bitwise the losses the
uninterrupted run would have. Checkpoints are written to a temporary directory and renamed into
place (``os.replace``), so a run killed at any moment leaves the previous checkpoint intact.
No pickle: tensors go to safetensors, everything else to JSON.

Continued runs. A checkpoint is ~12 bytes a parameter (fp32 weights and two AdamW moments), too
large to keep where only small files survive (a repository, a machine lent for a few hours).
``out/final`` is 2 bytes a parameter and carries the run's ``training_state.json`` (step, schedule,
data position, RNG states, settings); ``continue_from=final_dir`` starts a new run directory from it:
the same schedule, data stream and RNG continue, the weights are the bf16 ones exported, and
AdamW's moments restart from zero, with the learning rate re-warmed over ``rewarm_steps`` steps
(a fresh second moment makes the first updates ~lr in size whatever the gradient's scale). Not
bitwise the uninterrupted run, unlike ``resume``; every batch from then on is the same one.

Warm starts. ``init_from=model_dir`` starts a new run from an exported model's weights and tokenizer (its config
is the model's): the schedule starts at step 0 and the data stream is this run's own. For going on where a run's
data cannot be rebuilt (its corpus copied packages whose versions have changed since), or training a model further
on other data.

Denormals. Once logits become peaked, softmax and its backward produce subnormal floats, which
x86 CPUs handle in microcode, slowing steps down many times over. Flushing them to zero is a
process-wide setting, so ``train`` leaves it to its caller: ``mimo train`` sets it once
(:func:`mimo.utils.runtime.configure`), and so should a script that calls ``train`` itself.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from mimo.checkpoint import MiMoForCausalLM
from mimo.config import MiMoConfig, preset
from mimo.tokenizer import Tokenizer, train_bpe
from mimo.training.balance import bias_stats, load_imbalance, update_expert_bias
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
from mimo.training.data import PackedDataset, build_token_cache, split_files, stdlib_files
from mimo.training.loss import LossConfig, compute_losses
from mimo.training.optim import WarmupCosine, build_optimizer, clip_gradients, rewarm_factor
from mimo.training.synthetic import write_synthetic_corpus

logger = logging.getLogger(__name__)

# Fields that decide the data stream and the model: a resume with other values would not continue the run.
RESUME_FIXED = ("preset", "seq_len", "batch_size", "grad_accum", "mtp_weights", "seed", "vocab_size", "data_root",
                "heldout_percent", "split_digits", "synthetic_files", "init_from")


@dataclass
class TrainConfig:
    preset: str = "nano"
    out: str = "runs/mimo-nano"
    seq_len: int = 256
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100  # capped to a tenth of the schedule
    steps: int | None = None  # schedule length; None: fitted to max_minutes after a few timed steps
    max_minutes: float | None = None  # wall-clock budget of this process; stops with a checkpoint
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    mtp_weights: tuple[float, ...] = (0.3, 0.3, 0.3)
    balance_rate: float = 1e-3
    aux_coef: float = 1e-4
    dtype: str = "fp32"  # fp32 | bf16 (autocast; fp32 master weights)
    attention_backend: str = "sdpa"
    eval_interval: int = 200
    eval_batches: int = 16  # nano's whole held-out split (~200 rows) at batch 16
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    vocab_size: int | None = None  # None: the preset's
    data_root: str | None = None  # None: the running Python's standard library
    split_digits: bool = False  # the BPE gives every digit its own token (tokenizer.train_bpe)
    synthetic_files: int = 0  # copy-only synthetic Python files added to the corpus (training.synthetic)
    heldout_percent: int = 2
    resume: bool = False
    continue_from: str | None = None  # a final/ directory with training_state.json (see the module docstring)
    rewarm_steps: int = 20  # lr ramp after continue_from (AdamW's moments restart from zero)
    init_from: str | None = None  # a model directory whose weights and tokenizer start the run (see the module docstring)
    progress: bool = True

    def __post_init__(self) -> None:
        self.mtp_weights = tuple(float(w) for w in self.mtp_weights)
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be 'fp32' or 'bf16', got {self.dtype!r}")
        if self.dtype == "bf16" and self.attention_backend != "sdpa":
            raise ValueError("bf16 autocast needs attention_backend='sdpa' (the reference backend's fp32 mask "
                             "value overflows bf16 scores under autocast)")
        for name in ("seq_len", "batch_size", "grad_accum", "eval_interval", "checkpoint_interval", "keep_checkpoints",
                     "rewarm_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps is None and self.max_minutes is None:
            raise ValueError("give the number of steps or a time budget (max_minutes), or both")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------- metrics
def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # the last line of a run killed mid-write
                logger.warning("skipping a partial line in %s", path)
    return rows


def truncate_metrics(path: str, step: int) -> None:
    """Drop records after ``step`` (written by a run killed after its last checkpoint)."""
    rows = [r for r in read_metrics(path) if r["step"] <= step]
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)


def plot_metrics(metrics_path: str, png_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    if not train:
        return

    def smooth(v: list[float]) -> list[float]:
        """EMA over ~1/20 of the run, bias-corrected (Adam-style) so the first points are not dragged."""
        a = min(0.98, max(0.8, 1 - 20 / len(v)))
        out, m = [], 0.0
        for i, x in enumerate(v):
            m = a * m + (1 - a) * x
            out.append(m / (1 - a ** (i + 1)))
        return out

    steps = [r["step"] for r in train]
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    ax[0, 0].plot(steps, [r["main_loss"] for r in train], alpha=0.25, color="C0")
    ax[0, 0].plot(steps, smooth([r["main_loss"] for r in train]), color="C0", label="train (EMA)")
    if evals:
        ax[0, 0].plot([r["step"] for r in evals], [r["heldout_loss"] for r in evals], "o-", color="C3", label="held-out")
    ax[0, 0].set(title="next-token loss", xlabel="step", ylabel="cross-entropy (nats)")
    depths = sorted(int(k.rsplit("_", 1)[1]) for k in train[-1] if k.startswith("mtp_acc_"))
    ax[0, 1].plot(steps, smooth([r["acc"] for r in train]), label="main head")
    for k in depths:
        ax[0, 1].plot(steps, smooth([r[f"mtp_acc_{k}"] for r in train]), label=f"MTP depth {k}")
    for k, key in enumerate(["heldout_acc"] + [f"heldout_mtp_acc_{k}" for k in depths]):
        if evals and key in evals[-1]:
            ax[0, 1].plot([r["step"] for r in evals], [r[key] for r in evals], "o--", color=f"C{k}", ms=3)
    ax[0, 1].set(title="top-1 accuracy (lines: train EMA, dots: held-out)", xlabel="step")
    ax[1, 0].plot(steps, [r["imbalance"] for r in train], alpha=0.3, color="C2")
    ax[1, 0].plot(steps, smooth([r["imbalance"] for r in train]), color="C2", label="max/mean load (layer mean)")
    ax[1, 0].axhline(1.0, color="k", lw=0.5)
    ax[1, 0].set(title="expert load balance", xlabel="step")
    ax[1, 1].plot(steps, [r["lr"] for r in train], color="C4", label="learning rate")
    ax[1, 1].set(title="schedule", xlabel="step")
    for a in ax.flat:
        a.legend(loc="best", fontsize=8)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path + ".tmp.png", dpi=100)
    plt.close(fig)
    os.replace(png_path + ".tmp.png", png_path)


# ---------------------------------------------------------------------- setup
def _tokenizer(cfg: TrainConfig, vocab_size: int, max_length: int, train_files: list[tuple[str, str]]) -> Tokenizer:
    """The run's tokenizer: ``out/tokenizer`` when present, else a BPE trained on the training split."""
    directory = os.path.join(cfg.out, "tokenizer")
    if os.path.exists(os.path.join(directory, "tokenizer.json")):
        return Tokenizer.from_pretrained(directory)
    logger.info("training a %d-token byte-level BPE on %d files", vocab_size, len(train_files))
    texts = []
    for _, path in train_files:
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    tok = Tokenizer(train_bpe(texts, vocab_size, split_digits=cfg.split_digits), model_max_length=max_length)
    tmp = directory + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    os.replace(tmp, directory)  # a half-written tokenizer would silently change the token cache
    return tok


def _heldout(tokens: np.ndarray, cfg: TrainConfig, extra: int) -> PackedDataset | None:
    try:
        return PackedDataset(tokens, cfg.seq_len, extra, cfg.seed)
    except ValueError:
        logger.warning("the held-out split has too few tokens (%d) for one row: no held-out evaluation", len(tokens))
        return None


@torch.no_grad()
def evaluate(model: MiMoForCausalLM, data: PackedDataset, batch_size: int, n_batches: int, loss_cfg: LossConfig,
             bf16: bool = False) -> dict[str, float]:
    """Mean losses and accuracies over the first ``n_batches`` held-out batches (always the same rows)."""
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    for i, batch in enumerate(data.iter_sequential(batch_size)):
        if i >= n_batches:
            break
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = compute_losses(model, batch, loss_cfg)
        for k, v in out.items():
            if isinstance(v, float) and k != "balance_loss":
                sums[k] = sums.get(k, 0.0) + v * batch.shape[0]
        n += batch.shape[0]
    model.train()
    return {"heldout_loss" if k == "main_loss" else f"heldout_{k}": v / max(n, 1) for k, v in sums.items()}


def _synthetic_files(cfg: TrainConfig) -> list[tuple[str, str]]:
    """``cfg.synthetic_files`` files of :mod:`mimo.training.synthetic` (copy-only Python), written once into
    ``out/synthetic`` from the run's seed, as ``(relpath, path)`` beside the corpus's."""
    if not cfg.synthetic_files:
        return []
    directory = os.path.join(cfg.out, "synthetic")
    names = [f"synth_{i:05d}.py" for i in range(cfg.synthetic_files)]
    if not all(os.path.exists(os.path.join(directory, n)) for n in names):
        tmp = directory + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        size = write_synthetic_corpus(tmp, cfg.synthetic_files, seed=cfg.seed)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
        logger.info("wrote %d synthetic copy-only files (%.1f MB) to %s", cfg.synthetic_files, size / 1e6, directory)
    return [(f"synthetic/{n}", os.path.join(directory, n)) for n in names]


def _continued_state(cfg: TrainConfig) -> dict:
    """The training state that ``cfg.continue_from`` was exported with, checked against ``cfg``; its tokenizer
    becomes the run's (the data stream is a function of it)."""
    state = read_training_state(cfg.continue_from)
    _check_resume(cfg, state["train_config"])
    _adopt_tokenizer(cfg.out, cfg.continue_from)
    return state


def _adopt_tokenizer(out: str, model_dir: str) -> None:
    """Make ``model_dir``'s tokenizer the run's (``out/tokenizer``, which :func:`_tokenizer` then reuses), or check
    that it already is."""
    mine = os.path.join(out, "tokenizer")
    theirs = Tokenizer.from_pretrained(model_dir)
    if os.path.exists(os.path.join(mine, "tokenizer.json")):
        if Tokenizer.from_pretrained(mine).backend.to_str() != theirs.backend.to_str():
            raise ValueError(f"{mine} is not the tokenizer of {model_dir}: choose another --out")
    else:
        tmp = mine + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        theirs.save_pretrained(tmp)
        os.replace(tmp, mine)


def _check_resume(cfg: TrainConfig, saved: dict) -> None:
    now = json.loads(json.dumps(asdict(cfg)))
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # a setting newer than the checkpoint: its default
    for name in RESUME_FIXED:
        if saved.get(name, defaults[name]) != now[name]:
            raise ValueError(f"cannot resume: the checkpoint was trained with {name}={saved.get(name)!r}, "
                             f"this run asks for {now[name]!r}")


# ---------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, model_config: MiMoConfig | None = None,
          should_stop: Callable[[int], bool] | None = None) -> dict:
    """Run (or resume) training as configured; return a summary. ``model_config`` overrides the preset.

    Process-wide settings (subnormal flushing) are the caller's; see the module docstring."""
    start = time.perf_counter()
    deadline = start + 60 * cfg.max_minutes if cfg.max_minutes is not None else None
    os.makedirs(cfg.out, exist_ok=True)
    metrics_path, png_path = os.path.join(cfg.out, "metrics.jsonl"), os.path.join(cfg.out, "training.png")
    ckpt = latest_checkpoint(cfg.out)
    if ckpt and not cfg.resume:
        raise ValueError(f"{cfg.out} already holds checkpoints: resume it (--resume) or choose another --out")
    state = read_json(os.path.join(ckpt, "state.json")) if ckpt else {}
    if ckpt:
        _check_resume(cfg, state["train_config"])
    elif cfg.continue_from:
        state = _continued_state(cfg)
    elif cfg.resume:
        logger.warning("no checkpoint in %s: starting from scratch", cfg.out)
    continued = bool(cfg.continue_from) and not ckpt
    warm = bool(cfg.init_from) and not ckpt and not continued  # (resumed or continued: init_from only recorded)
    if warm:
        _adopt_tokenizer(cfg.out, cfg.init_from)

    base = model_config or (MiMoConfig.from_pretrained(cfg.init_from) if warm else preset(cfg.preset))
    files = stdlib_files(cfg.data_root) + _synthetic_files(cfg)
    train_files, held_files = split_files(files, cfg.heldout_percent)
    # the BPE learns from the real corpus only: random syllables would spend its merges on made-up words
    tok = _tokenizer(cfg, cfg.vocab_size or base.vocab_size, base.max_position_embeddings,
                     [f for f in train_files if not f[0].startswith("synthetic/")])
    loss_cfg = LossConfig(mtp_weights=cfg.mtp_weights, aux_coef=cfg.aux_coef)
    cache = os.path.join(cfg.out, "cache")
    data = PackedDataset(build_token_cache(tok, train_files, cache, cfg.progress), cfg.seq_len, loss_cfg.extra,
                         cfg.seed)
    held = (_heldout(build_token_cache(tok, held_files, cache, cfg.progress), cfg, loss_cfg.extra)
            if held_files else None)

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if ckpt or continued or warm:
        source = os.path.join(ckpt, "model") if ckpt else cfg.continue_from if continued else cfg.init_from
        model = MiMoForCausalLM.from_pretrained(source, dtype=torch.float32)
    else:
        mc = base.replace(vocab_size=cfg.vocab_size or base.vocab_size, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
        model = MiMoForCausalLM.from_config(mc, seed=cfg.seed)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} ids but the model only {model.config.vocab_size}")
    model.train()
    model.set_attention_backend(cfg.attention_backend)
    opt = build_optimizer(model, cfg.lr, cfg.weight_decay)
    step, tokens_seen, total = 0, 0, cfg.steps
    if ckpt or continued:
        if ckpt:
            load_optimizer(opt, ckpt)
        data.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        step, tokens_seen = state["step"], state["tokens_seen"]
        total = cfg.steps or state["total_steps"]
        truncate_metrics(metrics_path, step)
        logger.info("%s from %s at step %d", "resumed" if ckpt else "continued", ckpt or cfg.continue_from, step)
    elif os.path.exists(metrics_path):
        os.remove(metrics_path)
    if warm:
        logger.info("warm start from %s: a new schedule and data stream", cfg.init_from)
    logger.info("model: %.2fM parameters; %d training tokens, %d rows of %d", model.num_parameters() / 1e6,
                data.tokens.shape[0], data.num_rows, data.row_length)

    bf16 = cfg.dtype == "bf16"
    step_tokens = cfg.batch_size * cfg.grad_accum * cfg.seq_len
    # a continued run's first step, kept in its checkpoints so that resuming it re-warms the same way
    rewarm_from = state.get("rewarm_from", state["step"] if continued else None)
    timed: list[float] = []
    last_saved, last_eval, stop_reason = step, None, "done"
    final_dir = os.path.join(cfg.out, "final")

    def checkpoint() -> None:
        st = {"step": step, "total_steps": total, "tokens_seen": tokens_seen, "data": data.state_dict(),
              "rng": rng_state(), "train_config": asdict(cfg)}
        if rewarm_from is not None:
            st["rewarm_from"] = rewarm_from
        path = save_checkpoint(cfg.out, step, model, opt, st, cfg.keep_checkpoints)
        export_final(cfg.out, model, tok, state={k: v for k, v in st.items() if k != "rewarm_from"})
        plot_metrics(metrics_path, png_path)
        logger.info("checkpoint %s (and %s)", path, final_dir)

    bar = tqdm(total=total, initial=step, unit="step", desc="training", disable=not cfg.progress, dynamic_ncols=True)
    with open(metrics_path, "a", encoding="utf-8") as log:
        while True:
            if total is not None and step >= total:
                break
            if deadline is not None and time.perf_counter() >= deadline:
                stop_reason = "time"
                break
            t0 = time.perf_counter()
            if total is not None:
                warmup = min(cfg.warmup_steps, max(1, total // 10))  # a short run must still reach its peak lr
                lr = WarmupCosine(cfg.lr, warmup, total, cfg.min_lr_ratio)(step)
            else:  # schedule length not fitted yet: still warming up (or flat until it is)
                lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
            lr *= rewarm_factor(step, rewarm_from, cfg.rewarm_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            counts = None
            for _ in range(cfg.grad_accum):
                batch = data.next_batch(cfg.batch_size)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = compute_losses(model, batch, loss_cfg)
                (out["loss"] / cfg.grad_accum).backward()
                out["loss"] = float(out["loss"].detach())
                for k, v in out.items():
                    if isinstance(v, float):
                        sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
                counts = out["expert_counts"] if counts is None else counts + out["expert_counts"]
            gnorm = clip_gradients(model, cfg.grad_clip)
            if math.isfinite(gnorm):
                opt.step()
                update_expert_bias(model, counts, cfg.balance_rate)
            else:  # one bad batch must not poison the weights of an unattended run
                logger.warning("step %d: non-finite gradient norm; update skipped", step + 1)
            step += 1
            tokens_seen += step_tokens
            dt = time.perf_counter() - t0
            timed.append(dt)
            imb = load_imbalance(counts) if counts is not None and counts.numel() else torch.ones(1, device="cpu")
            rec = {"kind": "train", "step": step, **sums, "lr": lr, "grad_norm": gnorm, "imbalance": float(imb.mean()),
                   "imbalance_max": float(imb.max()), **bias_stats(model), "tokens": tokens_seen,
                   "tokens_per_s": step_tokens / dt, "elapsed_s": time.perf_counter() - start}
            log.write(json.dumps(rec) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{sums['main_loss']:.3f}", tok_s=f"{step_tokens / dt:.0f}")
            if total is None and len(timed) >= 6:  # fit the schedule to the time budget from measured steps
                per_step = sorted(timed[1:])[len(timed[1:]) // 2]
                total = max(step + 1, step + int(0.95 * (deadline - time.perf_counter()) / per_step))
                bar.total = total
                logger.info("%.2f s/step: the schedule spans %d steps to fit %.1f minutes", per_step, total,
                            cfg.max_minutes)
            if held is not None and step % cfg.eval_interval == 0:
                last_eval = {"kind": "eval", "step": step, **evaluate(model, held, cfg.batch_size, cfg.eval_batches,
                                                                      loss_cfg, bf16)}
                log.write(json.dumps(last_eval) + "\n")
                logger.info("step %d: held-out loss %.4f", step, last_eval["heldout_loss"])
            log.flush()
            stop = should_stop is not None and should_stop(step)
            if step % cfg.checkpoint_interval == 0 or stop:
                checkpoint()
                last_saved = step
            if stop:
                stop_reason = "stopped"
                break
        if held is not None and (last_eval is None or last_eval["step"] != step):
            last_eval = {"kind": "eval", "step": step, **evaluate(model, held, cfg.batch_size, cfg.eval_batches,
                                                                  loss_cfg, bf16)}
            log.write(json.dumps(last_eval) + "\n")
    bar.close()
    if step != last_saved or not os.path.isdir(final_dir):
        checkpoint()
    else:
        plot_metrics(metrics_path, png_path)
    return {"step": step, "total_steps": total, "stop_reason": stop_reason, "tokens_seen": tokens_seen,
            "checkpoint": latest_checkpoint(cfg.out), "final": final_dir, "heldout": last_eval,
            "elapsed_s": time.perf_counter() - start}
