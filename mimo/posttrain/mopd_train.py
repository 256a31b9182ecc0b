"""MOPD training (``mimo mopd``): the student samples its own answers, each token is scored by the teacher of
the prompt's domain, and the student moves toward it (MiMo-V2-Flash Sec. 4.4, Eq. 7-9; the loss itself is
:mod:`mimo.posttrain.mopd`).

One step:

1. **Prompts.** ``prompts_per_step`` examples from the train splits of the domains that have a teacher, the
   domains taken in turn (so every domain is trained on equally) and the example drawn from a generator
   seeded by ``(seed, step)``: the prompts are a function of the step, so a resumed run draws the same ones.
   The prompt is the conversation before the first assistant turn, rendered by the student's chat template
   with the example's tools and template settings (what ``scripts/eval_domains.py`` scores).
2. **Rollout** (on-policy). ``samples_per_prompt`` answers per prompt from mimo's own :class:`Engine`, all
   prompts in one continuous batch, sampled at ``temperature`` with one seed per sample (reproducible), the
   turn ending at ``<|im_end|>``. The engine runs **the training model object itself** (no copy, no reload),
   so every rollout sees the weights of the last optimizer step; its log-probs of the sampled tokens are μ_θ
   (the engine's log-softmax of the raw logits: the policy at temperature 1, computed by the inference path;
   at another ``temperature`` the samples are tempered and the IS weight corrects only the engine/trainer
   mismatch). Speculation is off: the adaptive drafting policy decides from wall-clock timings, and
   timing-dependent batch shapes would make rollouts, and so resume, inexact.
3. **Outcome reward.** Each answer is scored by its domain's metric (``tools``: the XML tool call parsed by
   :mod:`mimo.chat_format.parsers`; ``code``: the sandbox; ``arithmetic``: exact answer) and turned into a
   GRPO advantage within its prompt's group.
4. **Teacher.** The teacher of the prompt's domain, a separate model loaded once and never trained, gives
   ``log π_dom`` of the sampled tokens (no graph).
5. **Student.** The trainer's forward (with graph) gives ``log π_θ``; ``mopd_loss`` (Eq. 7-9) and one AdamW step.
   Rows go through in micro-batches of ``micro_batch`` with gradients accumulated, each scaled so the sum is
   Eq. 7's mean over sequences. Only the main head is trained: MTP blocks get no gradient (the loss has no MTP
   term) and the expert-balancing bias stays as the student had it (moving it would change the routing the
   rollouts are sampled with between steps for a reason outside the objective).

Rollout routing replay (R3, paper Sec. 4.6). The engine records the top-k experts every MoE layer chose for
every token it computed (:class:`mimo.engine.routing.RoutingRecorder`). Every step logs
``route_disagreement``: the fraction of (token, MoE layer) router decisions where the trainer's forward picks
another expert set than the engine did (the R3 paper reports ~10% on a large model). With ``r3`` the trainer's
forward uses the engine's experts (``CausalLM.trunk(replay=...)``; the gate weights are still the trainer's,
so the router keeps its gradient) and the logged fraction is what the trainer *would* have chosen.

Resume is exact: the checkpoint holds the fp32 weights, the optimizer and the generators; prompts and sample
seeds are functions of the step, so a run stopped and resumed ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mimo.checkpoint import MiMoForCausalLM
from mimo.engine.config import EngineConfig
from mimo.engine.engine import Engine
from mimo.engine.params import SamplingParams
from mimo.engine.routing import RoutingRecorder
from mimo.posttrain import domains
from mimo.posttrain.mopd import grpo_advantages, mopd_loss, token_log_probs
from mimo.tokenizer import Tokenizer
from mimo.training.checkpointing import (
    export_final,
    latest_checkpoint,
    load_optimizer,
    read_json,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mimo.training.optim import build_optimizer, clip_gradients
from mimo.training.trainer import truncate_metrics

__all__ = ["MOPDConfig", "Rollout", "answer_batch", "answer_log_probs", "check_teachers", "draw_prompts",
           "prompt_domains", "route_disagreement", "rollout", "train_mopd"]

logger = logging.getLogger(__name__)

END_OF_TURN = "<|im_end|>"


@dataclass
class MOPDConfig:
    student: str  # the model to train (a directory with tokenizer and chat template), e.g. an SFT run's final/
    teachers: dict[str, str]  # domain -> teacher model directory; prompts come from these domains only
    prompts: str  # what mimo.posttrain.domains.write_domains wrote (DOMAIN/train.jsonl)
    out: str
    steps: int = 50
    prompts_per_step: int = 6
    samples_per_prompt: int = 4  # the GRPO group
    max_new_tokens: int = 256
    temperature: float = 1.0  # on-policy: the student's own distribution
    lr: float = 2e-5  # constant; an order below nano's SFT peak (2e-4), as RL usually sits below SFT
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    alpha: float = 1.0  # weight of the GRPO outcome advantage in Eq. 9 (0: pure distillation); the paper gives none
    kl_weight: float = 1.0  # weight of Eq. 9's distillation term (0: outcome reward only, no teacher: Fig. 6's RL)
    domains: list[str] | None = None  # the prompts' domains (None: the teachers')
    eps_low: float = 0.5  # Eq. 8's truncation bounds on pi_theta / mu_theta
    eps_high: float = 2.0
    r3: bool = False  # rollout routing replay: the trainer's forward uses the engine's expert choices
    micro_batch: int = 8  # rows per forward (teacher and student); gradients accumulate over them
    max_num_seqs: int = 32  # the rollout engine's batch
    seed: int = 0
    checkpoint_interval: int = 10
    keep_checkpoints: int = 2
    device: str | None = None  # None: cuda when available, else cpu
    dtype: str = "fp32"  # the trainer's and teachers' forwards: fp32, or bf16 autocast over fp32 weights
    resume: bool = False
    progress: bool = True
    sandbox: dict[str, Any] = field(default_factory=dict)  # keyword arguments of mimo.posttrain.sandbox.run


@dataclass
class Rollout:
    """One sampled answer and everything the loss needs about it."""

    domain: str
    example: dict
    prompt_ids: list[int]
    answer_ids: list[int]
    logp_inference: list[float]  # μ_θ of each answer token (the engine's)
    text: str
    seed: int
    reward: float = 0.0
    orm_advantage: float = 0.0


def check_teachers(teachers: dict[str, str]) -> None:
    """Known domains and existing directories, named in the error."""
    if not teachers:
        raise ValueError(f"at least one teacher is needed (domains: {', '.join(domains.DOMAINS)})")
    for dom, path in teachers.items():
        if dom not in domains.DOMAINS:
            raise ValueError(f"unknown domain {dom!r} for a teacher; domains are {', '.join(domains.DOMAINS)}")
        if not os.path.isdir(path):
            raise ValueError(f"the {dom} teacher {path!r} is not a directory")


def prompt_domains(cfg: MOPDConfig) -> list[str]:
    """The domains prompts come from (``cfg.domains``, else the teachers'), each with a teacher unless the
    distillation term is off (``kl_weight`` 0)."""
    doms = list(cfg.domains) if cfg.domains else list(cfg.teachers)
    if not doms:
        raise ValueError(f"no domains: name teachers, or domains with kl_weight 0 ({', '.join(domains.DOMAINS)})")
    for dom in doms:
        if dom not in domains.DOMAINS:
            raise ValueError(f"unknown domain {dom!r}; domains are {', '.join(domains.DOMAINS)}")
    if cfg.kl_weight:
        check_teachers(cfg.teachers)
        missing = [d for d in doms if d not in cfg.teachers]
        if missing:
            raise ValueError(f"no teacher for {', '.join(missing)}: every domain needs one unless kl_weight is 0")
    return doms


def _settings(d: dict) -> dict:
    """What must match for a resume to be exact (JSON's view; settings added since a checkpoint was written take
    their defaults, which is what that run used)."""
    full = {**asdict(MOPDConfig(student="", teachers={}, prompts="", out="")), **d}
    return {k: v for k, v in json.loads(json.dumps(full)).items() if k not in ("resume", "progress", "device")}


def draw_prompts(pools: dict[str, list[dict]], cfg: MOPDConfig, step: int) -> list[tuple[str, dict]]:
    """The step's prompts: domains in turn, examples drawn by a generator seeded with ``(seed, step)``."""
    rng = np.random.default_rng([cfg.seed, step])
    names = sorted(pools)
    out = []
    for i in range(cfg.prompts_per_step):
        dom = names[(step * cfg.prompts_per_step + i) % len(names)]
        out.append((dom, pools[dom][int(rng.integers(len(pools[dom])))]))
    return out


def rollout(engine: Engine, tok: Tokenizer, prompts: list[tuple[str, dict]], cfg: MOPDConfig,
            step: int) -> list[Rollout]:
    """``samples_per_prompt`` answers per prompt, in prompt order then sample order (groups are contiguous)."""
    end = tok.token_to_id(END_OF_TURN)
    n = cfg.samples_per_prompt
    requests = []
    for p, (dom, ex) in enumerate(prompts):
        ids = tok.encode(domains.render_prompt(tok, ex))
        # one seed per sample (the engine gives sample i seed + i): reproducible, and how routes are named
        seed = ((cfg.seed * 1_000_003 + step) * 4096 + p) * n
        params = SamplingParams(n=n, temperature=cfg.temperature, max_tokens=cfg.max_new_tokens, seed=seed,
                                logprobs=0, skip_special_tokens=False, stop_token_ids=[] if end is None else [end])
        requests.append((dom, ex, ids, seed, engine.add_request(ids, params)))
    while engine.has_unfinished():
        engine.step()
    out = []
    for dom, ex, ids, seed, rid in requests:
        res = engine.output(rid)
        engine.release(rid)
        for c in sorted(res.outputs, key=lambda c: c.index):
            if c.error:
                raise RuntimeError(f"rollout failed: {c.error}")
            out.append(Rollout(dom, ex, ids, list(c.token_ids), [lp.logprob for lp in c.logprobs or []], c.text,
                               seed + c.index))
    return out


def answer_batch(rows: list[Rollout], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                         torch.Tensor]:
    """(ids [B, T] right-padded prompt + answer[:-1], answer positions [B, A] (index of the hidden state that
    predicts each answer token), answer tokens [B, A], mask [B, A])."""
    width = max(len(r.prompt_ids) + len(r.answer_ids) - 1 for r in rows)
    a_max = max(len(r.answer_ids) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    where = torch.zeros(len(rows), a_max, dtype=torch.long)
    answer = torch.full((len(rows), a_max), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), a_max, dtype=torch.bool)
    for i, r in enumerate(rows):
        seq = r.prompt_ids + r.answer_ids[:-1]
        ids[i, : len(seq)] = torch.tensor(seq)
        a = len(r.answer_ids)
        where[i, :a] = torch.arange(len(r.prompt_ids) - 1, len(r.prompt_ids) - 1 + a)
        answer[i, :a] = torch.tensor(r.answer_ids)
        mask[i, :a] = True
    return ids.to(device), where.to(device), answer.to(device), mask.to(device)


def answer_log_probs(model: MiMoForCausalLM, ids: torch.Tensor, where: torch.Tensor, answer: torch.Tensor,
                     router_out: list | None = None, replay: dict | None = None) -> torch.Tensor:
    """``log π(answer token)`` [B, A] from one forward; logits only at the answer positions (the vocabulary
    projection of the prompt would be most of the memory and none of the use)."""
    hidden = model.trunk(ids, router_out=router_out, replay=replay)
    picked = hidden.gather(1, where.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    return token_log_probs(model.compute_logits(picked), answer)


def _moe_layers(model: MiMoForCausalLM) -> list[int]:
    return [i for i in range(model.config.num_hidden_layers) if model.config.is_moe(i)]


def _engine_routes(rows: list[Rollout], recorder: RoutingRecorder, width: int) -> torch.Tensor | None:
    """The engine's experts [B, T, MoE layers, K] for the trainer's batch (padding: the row's first token's)."""
    out = []
    for r in rows:
        length = len(r.prompt_ids) + len(r.answer_ids) - 1
        routes = recorder.routes(r.seed, length).long()
        out.append(torch.cat([routes, routes[:1].expand(width - length, -1, -1)]) if width > length else routes)
    return torch.stack(out) if out else None


def _own_choice(model: MiMoForCausalLM, router_out: list, shape: tuple[int, int]) -> torch.Tensor:
    """The experts [B, T, L, K] the trainer's routers chose, or would have chosen under replay (the top-k of
    score + bias; the replayed forward hands back the replayed experts, so the choice is recomputed)."""
    c = model.config
    moes = [model.model.layers[i].mlp for i in _moe_layers(model)]
    chosen = []
    for moe, (scores, experts) in zip(moes, router_out):
        if c.n_group == 1:
            experts = (scores + moe.gate.e_score_correction_bias.float()).topk(c.num_experts_per_tok, dim=-1)[1]
        chosen.append(experts.detach())
    return torch.stack(chosen, dim=1).view(*shape, len(chosen), -1)


def route_disagreement(engine_routes: torch.Tensor, trainer_routes: torch.Tensor, valid: torch.Tensor) -> float:
    """Fraction of (token, MoE layer) router decisions whose top-k expert *sets* differ; ``valid`` [B, T]."""
    a = engine_routes.to(trainer_routes.device).sort(-1)[0]
    b = trainer_routes.sort(-1)[0]
    differ = (a != b).any(-1)  # [B, T, L]
    v = valid.unsqueeze(-1).expand_as(differ)
    return float(differ[v].float().mean()) if v.any() else 0.0


def train_mopd(cfg: MOPDConfig, should_stop=None) -> dict:
    """Run (or resume) MOPD as configured; returns a summary. ``should_stop(step)`` ends it after that step
    (with a checkpoint), as an interruption would."""
    start = time.perf_counter()
    doms = prompt_domains(cfg)
    for name in ("steps", "prompts_per_step", "samples_per_prompt", "max_new_tokens", "micro_batch"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be 'fp32' or 'bf16', got {cfg.dtype!r}")
    bf16 = cfg.dtype == "bf16"
    os.makedirs(cfg.out, exist_ok=True)
    ckpt = latest_checkpoint(cfg.out)
    if ckpt and not cfg.resume:
        raise ValueError(f"{cfg.out} already holds checkpoints: resume it (--resume) or choose another --out")
    state = read_json(os.path.join(ckpt, "state.json")) if ckpt else {}
    if ckpt and _settings(state["mopd_config"]) != _settings(asdict(cfg)):
        raise ValueError(f"{ckpt} was written with other settings; resume with the same ones")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tok = Tokenizer.from_pretrained(cfg.student)
    if not tok.chat_template:
        raise ValueError(f"{cfg.student} has no chat template: MOPD renders chat prompts (train with mimo sft first)")
    pools = {dom: domains.load(cfg.prompts, dom, "train") for dom in doms}
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = MiMoForCausalLM.from_pretrained(os.path.join(ckpt, "model") if ckpt else cfg.student,
                                            dtype=torch.float32).to(device)
    loaded: dict[str, MiMoForCausalLM] = {}  # a directory serving several domains is loaded once
    teachers = {}
    for dom, path in (cfg.teachers.items() if cfg.kl_weight else ()):
        if path not in loaded:
            loaded[path] = MiMoForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
            loaded[path].requires_grad_(False)
        teachers[dom] = loaded[path]
        if teachers[dom].config.vocab_size != model.config.vocab_size:
            raise ValueError(f"the {dom} teacher's vocabulary ({teachers[dom].config.vocab_size}) is not the "
                             f"student's ({model.config.vocab_size}): distillation compares token log-probs")
    # SDPA for the trainer's and teachers' forwards (rows are right-padded, so causal attention is exact for
    # them): ~3x the explicit reference's speed on ~900-token tool prompts, and under bf16 autocast the reference's
    # fp32 mask value would overflow. Student and teachers alike: a teacher equal to the student gives zero advantage.
    for m in (model, *loaded.values()):
        m.set_attention_backend("sdpa")
    opt = build_optimizer(model, cfg.lr, cfg.weight_decay)
    step = 0
    if ckpt:
        load_optimizer(opt, ckpt)
        set_rng_state(state["rng"])
        step = state["step"]
        logger.info("resumed from %s at step %d", ckpt, step)
    longest = max(len(tok.encode(domains.render_prompt(tok, ex))) for pool in pools.values() for ex in pool)
    engine = Engine(model, tok, EngineConfig(max_num_seqs=cfg.max_num_seqs,
                                             max_model_len=min(model.config.max_position_embeddings,
                                                               longest + cfg.max_new_tokens)))
    recorder = RoutingRecorder()
    engine.runner.routing = recorder
    moe_layers = _moe_layers(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    metrics = os.path.join(cfg.out, "metrics.jsonl")
    if ckpt:  # a run killed after its last checkpoint logged steps that the resumed run logs again
        truncate_metrics(metrics, step)
    elif os.path.exists(metrics):
        os.remove(metrics)

    def checkpoint() -> None:
        st = {"step": step, "rng": rng_state(), "mopd_config": asdict(cfg)}
        save_checkpoint(cfg.out, step, model, opt, st, cfg.keep_checkpoints)
        export_final(cfg.out, model, tok, state={"step": step, "mopd_config": asdict(cfg)})  # step: how far it got

    last = None
    bar = tqdm(total=cfg.steps, initial=step, unit="step", desc="mopd", disable=not cfg.progress, dynamic_ncols=True)
    with open(metrics, "a", encoding="utf-8") as log:
        while step < cfg.steps:
            t0 = time.perf_counter()
            recorder.clear()
            model.eval()
            rows = rollout(engine, tok, draw_prompts(pools, cfg, step), cfg, step)
            t1 = time.perf_counter()
            for r in rows:
                r.reward = domains.score_text(r.example, r.text, **cfg.sandbox)
            rewards = torch.tensor([r.reward for r in rows]).view(cfg.prompts_per_step, cfg.samples_per_prompt)
            for r, a in zip(rows, grpo_advantages(rewards).flatten().tolist()):
                r.orm_advantage = a
            t2 = time.perf_counter()
            chunks = [rows[i : i + cfg.micro_batch] for i in range(0, len(rows), cfg.micro_batch)]
            teacher_lp = []
            # Grad mode stays on (the teacher's weights are frozen, so no graph is built): the forward then runs
            # the very code the student's does (the CPU decode kernels apply only without grad mode), and a
            # teacher equal to the student gives exactly zero advantage.
            batches = [answer_batch(chunk, pad, device) for chunk in chunks]
            with torch.enable_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                for chunk, (ids, where, answer, _) in zip(chunks, batches) if cfg.kl_weight else ():
                    lp = torch.zeros(where.shape, device=device)
                    for dom in {r.domain for r in chunk}:
                        sel = torch.tensor([r.domain == dom for r in chunk], device=device)
                        lp[sel] = answer_log_probs(teachers[dom], ids[sel], where[sel], answer[sel])
                    teacher_lp.append(lp.detach())
            t3 = time.perf_counter()
            model.train()
            opt.zero_grad(set_to_none=True)
            totals = {"reverse_kl": 0.0, "advantage": 0.0, "truncated": 0.0}
            n_tokens, disagree, loss_sum = 0, [], 0.0
            for j, (chunk, (ids, where, answer, mask)) in enumerate(zip(chunks, batches)):
                t_lp = teacher_lp[j] if teacher_lp else None
                routes = _engine_routes(chunk, recorder, ids.shape[1])
                replay = {layer: routes[:, :, j] for j, layer in enumerate(moe_layers)} if cfg.r3 else None
                router_out: list = []
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    lp = answer_log_probs(model, ids, where, answer, router_out, replay)
                mu = torch.zeros(mask.shape, device=device)
                for i, r in enumerate(chunk):
                    mu[i, : len(r.logp_inference)] = torch.tensor(r.logp_inference, device=device)
                orm = torch.tensor([r.orm_advantage for r in chunk], device=device)
                loss, stats = mopd_loss(lp, t_lp, mu, mask, orm, alpha=cfg.alpha, beta=cfg.kl_weight,
                                        eps_low=cfg.eps_low, eps_high=cfg.eps_high)
                (loss * len(chunk) / len(rows)).backward()  # the sum over micro-batches is Eq. 7's mean
                loss_sum += float(loss.detach()) * len(chunk) / len(rows)
                k = int(mask.sum())
                n_tokens += k
                for name in totals:
                    totals[name] += (getattr(stats, name) or 0.0) * k
                if router_out and routes is not None:
                    lengths = torch.tensor([len(r.prompt_ids) + len(r.answer_ids) - 1 for r in chunk])
                    valid = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).to(device)
                    disagree.append((route_disagreement(routes, _own_choice(model, router_out, tuple(ids.shape)),
                                                        valid), int(valid.sum())))
            gnorm = clip_gradients(model, cfg.grad_clip)
            if np.isfinite(gnorm):
                opt.step()
            else:
                logger.warning("step %d: non-finite gradient norm; update skipped", step + 1)
            t4 = time.perf_counter()
            step += 1
            per_domain: dict[str, list[float]] = {}
            for r in rows:
                per_domain.setdefault(r.domain, []).append(r.reward)
            dec = sum(w for _, w in disagree)
            last = {"step": step, "loss": loss_sum, **{k: v / max(1, n_tokens) for k, v in totals.items()},
                    **({} if cfg.kl_weight else {"reverse_kl": None}),
                    "reward": {d: sum(v) / len(v) for d, v in sorted(per_domain.items())},
                    "route_disagreement": sum(f * w for f, w in disagree) / dec if dec else None, "r3": cfg.r3,
                    "tokens": n_tokens, "samples": len(rows), "grad_norm": gnorm, "lr": cfg.lr,
                    "seconds": {"rollout": t1 - t0, "reward": t2 - t1, "teacher": t3 - t2, "train": t4 - t3},
                    "elapsed_s": time.perf_counter() - start}
            log.write(json.dumps(last) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(kl="-" if last["reverse_kl"] is None else f"{last['reverse_kl']:.3f}",
                            trunc=f"{last['truncated']:.2f}")
            stop = should_stop is not None and should_stop(step)
            if step % cfg.checkpoint_interval == 0 or stop or step == cfg.steps:
                checkpoint()
            if stop:
                break
    bar.close()
    engine.runner.routing = None
    if not os.path.isdir(os.path.join(cfg.out, "final")):
        checkpoint()
    return {"step": step, "steps": cfg.steps, "last": last, "final": os.path.join(cfg.out, "final"),
            "elapsed_s": time.perf_counter() - start}

