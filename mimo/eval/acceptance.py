"""How well MTP drafts are accepted on real text, and what it buys: ``mimo eval``'s speculation figures.

For k = 0..K drafts per step (fixed) and for the adaptive policy, greedy batch-1 decoding of held-out prompts:
acceptance length (tokens per main-model forward), tokens/s, and whether every output is plain greedy's. At k = K
it also measures, per depth j, the chance that draft j is accepted once drafts 1..j-1 were, and relates each
verify step's acceptance to the entropy of the main model's next-token distribution where the step starts
(nats; from one teacher-forced forward over the prompt and its greedy output, which is what the engine
computed). The paper fits AL ≈ 4·(1 − 0.58·x^0.58) to its benchmarks' (entropy, AL) points (Sec. 5, Fig. 7);
:func:`fit_paper_form` fits the same form to ours.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from mimo.engine.engine import Engine
from mimo.engine.params import SamplingParams
from mimo.model.causal_lm import CausalLM
from mimo.tokenizer import Tokenizer

PAPER_FIT = (0.58, 0.58)  # AL = (K + 1)·(1 − a·x^b) with K = 3, the paper's fit
ENTROPY_BINS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, math.inf)


@dataclass
class Run:
    """One engine setting over every prompt."""

    acceptance_length: float
    tokens_per_s: float
    outputs: list[list[int]]
    drafted: int = 0
    accepted: int = 0
    drafts_per_step: dict[int, int] = field(default_factory=dict)
    # per prompt, per decode step: (output index of its first token, 1 if it ran to its own token, drafts accepted)
    steps: list[list[tuple[int, int, int]]] = field(default_factory=list)


@dataclass
class SpeculationReport:
    runs: dict[str, Run]  # "k=0".."k=K", "adaptive"
    depth_acceptance: list[float]
    entropy: dict


def _decode(eng: Engine, prompts: list[list[int]], new_tokens: int, record_steps: bool) -> Run:
    sp = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    outs, seconds, steps, toks, drafted, accepted = [], 0.0, 0, 0, 0, 0
    hist: dict[int, int] = {}
    per_prompt: list[list[tuple[int, int, int]]] = []
    for p in prompts:  # batch 1: the latency case speculative decoding is for
        rid = eng.add_request(p, sp)
        mine: list[tuple[int, int, int]] = []
        n_out = 0
        t = time.perf_counter()
        while eng.has_unfinished():
            for d in eng.step():
                if record_steps and n_out and d.provenance:
                    # a decode step emits its accepted drafts (provenance 1..a) then the main model's token,
                    # unless max_tokens cut it short
                    a = sum(1 for x in d.provenance if x > 0)
                    mine.append((n_out, int(d.provenance[-1] == 0), a))
                n_out += len(d.token_ids)
        seconds += time.perf_counter() - t
        o = eng.output(rid)
        steps, toks = steps + o.stats.decode_steps, toks + o.stats.decode_tokens
        drafted, accepted = drafted + o.stats.drafted, accepted + o.stats.accepted
        for k, n in o.stats.drafts_per_step.items():
            hist[k] = hist.get(k, 0) + n
        outs.append(o.outputs[0].token_ids)
        per_prompt.append(mine)
        eng.release(rid)
    return Run(toks / max(1, steps), len(prompts) * new_tokens / seconds, outs, drafted, accepted,
               dict(sorted(hist.items())), per_prompt)


@torch.no_grad()
def _entropies(model: CausalLM, prompt: list[int], output: list[int]) -> np.ndarray:
    """Entropy (nats) of the main model's next-token distribution before each output token."""
    ids = torch.tensor([prompt + output[:-1]], device=model.lm_head.weight.device)
    logits = model(ids).logits[0, len(prompt) - 1 :].float()
    logp = torch.log_softmax(logits, -1)
    return (-(logp.exp() * logp).sum(-1)).cpu().numpy()


def paper_fit(x: float, k: int = 3) -> float:
    """The paper's AL at entropy x (its form, scaled to k drafts)."""
    return (k + 1) * (1 - PAPER_FIT[0] * x ** PAPER_FIT[1])


def fit_paper_form(points: list[tuple[float, float]], k: int) -> tuple[float, float] | None:
    """Least-squares (a, b) of AL = (k+1)·(1 − a·x^b) in log space over points (x, AL) with 0 < x and AL < k+1."""
    xs, ys = [], []
    for x, al in points:
        if x > 0 and al < k + 1:
            xs.append(math.log(x))
            ys.append(math.log(1 - al / (k + 1)))
    if len(xs) < 3 or np.ptp(xs) == 0:
        return None
    b, log_a = np.polyfit(xs, ys, 1)
    return float(math.exp(log_a)), float(b)


def speculation_report(model: CausalLM, tokenizer: Tokenizer, texts: list[str], prefix_tokens: int = 96,
                       new_tokens: int = 64, max_prompts: int = 16, progress: bool = True,
                       on_result: Callable[[str, Run], None] | None = None) -> SpeculationReport | None:
    """Every figure above over up to ``max_prompts`` held-out prompts of ``prefix_tokens`` tokens each (None if
    the model has no MTP blocks or no text is long enough). ``on_result(name, run)`` as each setting finishes."""
    prompts = [ids[:prefix_tokens] for ids in (tokenizer.encode(t) for t in texts) if len(ids) > prefix_tokens]
    prompts = prompts[:max_prompts]
    kmax = model.config.num_mtp_layers
    if not prompts or kmax == 0:
        return None
    settings = [(f"k={k}", k, "fixed") for k in range(kmax + 1)] + [("adaptive", kmax, "adaptive")]
    runs: dict[str, Run] = {}
    for name, k, policy in tqdm(settings, desc="speculation", disable=not progress):
        eng = Engine(model, num_speculative_tokens=k, max_num_seqs=1, speculative_policy=policy)
        if policy == "adaptive":  # a first untimed pass: the policy measures its step times, as a server would
            _decode(eng, prompts[:2], min(new_tokens, 32), False)
        runs[name] = _decode(eng, prompts, new_tokens, record_steps=(name == f"k={kmax}"))
        if on_result is not None:
            on_result(name, runs[name])
    full = runs[f"k={kmax}"]
    tries, accepts = [0] * kmax, [0] * kmax
    step_points: list[tuple[float, int]] = []  # (entropy where the step starts, tokens it gave)
    prompt_points: list[tuple[float, float]] = []
    for p, out, steps in zip(prompts, full.outputs, full.steps):
        h = _entropies(model, p, out)
        gave = []
        for first, complete, a in steps:
            if not complete:
                continue
            for j in range(min(kmax, a + 1)):
                tries[j] += 1
                accepts[j] += j < a
            step_points.append((float(h[first]), a + 1))
            gave.append(a + 1)
        if gave:
            prompt_points.append((float(h[1:].mean()), float(np.mean(gave))))
    bins = []
    for lo, hi in zip(ENTROPY_BINS, ENTROPY_BINS[1:]):
        inside = [(x, n) for x, n in step_points if lo <= x < hi]
        if inside:
            mean_x = float(np.mean([x for x, _ in inside]))
            bins.append({"entropy_from": lo, "entropy_to": hi if hi != math.inf else None, "steps": len(inside),
                         "mean_entropy": mean_x, "acceptance_length": float(np.mean([n for _, n in inside])),
                         "paper_fit": paper_fit(mean_x, kmax)})
    fit = fit_paper_form(prompt_points, kmax)
    entropy = {
        "units": "nats", "k": kmax,
        "per_prompt": [{"entropy": x, "acceptance_length": al} for x, al in prompt_points],
        "per_step_bins": bins,
        "paper_fit": {"a": PAPER_FIT[0], "b": PAPER_FIT[1], "form": "AL = 4 * (1 - a * x**b)"},
        "our_fit": {"a": fit[0], "b": fit[1]} if fit else None,
    }
    depth = [a / t if t else 0.0 for a, t in zip(accepts, tries)]
    return SpeculationReport(runs, depth, entropy)


def plot_entropy(entropy: dict, path: str) -> None:
    """AL against entropy: our prompts (points), our steps (binned means), the paper's fit and ours (PNG)."""
    from matplotlib.figure import Figure  # a figure of its own: pyplot's global backend stays untouched

    k = entropy["k"]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    pts = entropy["per_prompt"]
    if pts:
        ax.scatter([p["entropy"] for p in pts], [p["acceptance_length"] for p in pts], s=14, alpha=0.6,
                   label="held-out prompts (mean over the prompt)")
    bins = entropy["per_step_bins"]
    if bins:
        ax.plot([b["mean_entropy"] for b in bins], [b["acceptance_length"] for b in bins], "o-",
                label="verify steps, binned by entropy")
    xmax = max([p["entropy"] for p in pts] + [1.0])
    xs = np.linspace(1e-4, xmax, 200)
    a, b = PAPER_FIT
    ax.plot(xs, (k + 1) * (1 - a * xs**b), "k--", label=f"paper: {k + 1}(1 - {a} x^{b})")
    if entropy["our_fit"]:
        a2, b2 = entropy["our_fit"]["a"], entropy["our_fit"]["b"]
        ax.plot(xs, (k + 1) * (1 - a2 * xs**b2), "r:", label=f"fit here: {k + 1}(1 - {a2:.2f} x^{b2:.2f})")
    ax.set_xlabel("next-token entropy of the main model (nats)")
    ax.set_ylabel(f"acceptance length (tokens per step, k={k})")
    ax.set_ylim(1, k + 1.05)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
