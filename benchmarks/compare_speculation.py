"""Speculation that never loses: the adaptive policy against every fixed number of MTP drafts, on this machine.

Two models: the shipped mimo-nano, and a copy whose MTP blocks are re-initialised (random drafts, almost all
rejected: where a fixed k loses most). For each, greedy decode of third-party Python code (files of the
packages installed beside mimo, which mimo-nano never trained on) at batch 1, 4 and 8, and the README's own
command (``def fibonacci(n):``, batch 1): k = 0, 1, 2, 3 fixed and adaptive (at most 3). Each setting keeps its
engine across repeats, after ``--warmup`` untimed runs (3: the adaptive policy times its steps and learns the
drafts' acceptance over its first few hundred decode steps, as a server's does once);
the settings run interleaved in a rotating order; the best fixed setting is the one with the best median, and
each repeat's adaptive rate is divided by that setting's rate in the same repeat (the median of these paired
ratios is reported, with a 90% bootstrap interval over the repeats).

Two more figures say how far to trust it. ``control``: a second k = 0 engine, run like the others; its paired
ratio to k = 0 is the benchmark's own noise floor (the two are the same computation). ``held out``: where fixed
settings are within noise of each other, the best of four noisy medians is biased upwards; so the best fixed k
is also chosen on the even repeats and the paired ratio measured on the odd ones, and the other way round (the
mean of the two).

    .venv/bin/python benchmarks/compare_speculation.py --json-out benchmarks/results/speculation-policy.json
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _machine import describe, measured  # noqa: E402
from _results import write_json  # noqa: E402

from mimo.checkpoint import MiMoForCausalLM  # noqa: E402
from mimo.engine.engine import Engine  # noqa: E402
from mimo.engine.llm import prepare_for_inference  # noqa: E402
from mimo.eval.speed import decode_run  # noqa: E402
from mimo.tokenizer import Tokenizer  # noqa: E402
from mimo.utils import runtime  # noqa: E402
from mimo.utils.paths import resolve_model_dir  # noqa: E402

SETTINGS = [("k=0", 0, "fixed"), ("control", 0, "fixed"), ("k=1", 1, "fixed"), ("k=2", 2, "fixed"), ("k=3", 3, "fixed"),
            ("adaptive", 3, "adaptive")]


def third_party_code(tok: Tokenizer, n: int, length: int) -> list[list[int]]:
    """Prompts from the installed packages' Python files (not the standard library mimo-nano trained on)."""
    import jinja2
    import tqdm

    files = []
    for pkg in (jinja2, tqdm):
        root = os.path.dirname(pkg.__file__)
        files += sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".py"))
    out = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            ids = tok.encode(f.read())
        if len(ids) > length:
            out.append(ids[:length])
        if len(out) == n:
            break
    return out


def reinitialised_mtp(model: MiMoForCausalLM) -> MiMoForCausalLM:
    """The same trunk with MTP blocks re-drawn at random (normal, std 0.02; norms at 1): drafts are noise."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.model.mtp.named_parameters():
            if p.dtype.is_floating_point:
                if "norm" in name:
                    p.fill_(1.0)
                else:
                    p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.dtype))
    return model


def median_interval(ratios: list[float], level: float = 0.9, resamples: int = 2000, seed: int = 0) -> list[float]:
    """A bootstrap interval for the median of paired ratios (the repeats resampled with replacement): how far the
    reported median could move on this machine's noise alone, which decides whether a figure near a bar is a miss."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    tail = (1.0 - level) / 2
    return [medians[int(tail * (resamples - 1))], medians[int((1.0 - tail) * (resamples - 1))]]


def measure(model, prompts_by_case: dict[str, list[list[int]]], args) -> list[dict]:
    rows = []
    for case, prompts in prompts_by_case.items():
        b = len(prompts)
        engines = {name: Engine(model, num_speculative_tokens=k, speculative_policy=policy, max_num_seqs=b)
                   for name, k, policy in SETTINGS}
        for eng in engines.values():  # untimed: warm-up, and the adaptive policy's first step timings
            for _ in range(args.warmup):
                decode_run(eng, prompts, args.new_tokens)
        rates: dict[str, list[float]] = {name: [] for name, _, _ in SETTINGS}
        last = {}
        for rep in range(args.repeats):
            order = SETTINGS[rep % len(SETTINGS):] + SETTINGS[: rep % len(SETTINGS)]
            for name, _, _ in order:
                r = decode_run(engines[name], prompts, args.new_tokens)
                rates[name].append(r.tokens_per_s)
                last[name] = r
        fixed = [n for n, _, p in SETTINGS if p == "fixed" and n != "control"]
        med = {n: statistics.median(v) for n, v in rates.items()}
        best = max(fixed, key=lambda n: med[n])  # by median; then paired with it repeat by repeat (the max of
        # four noisy rates per repeat would be biased upwards)
        paired = [rates["adaptive"][i] / rates[best][i] for i in range(args.repeats)]
        control = statistics.median(rates["control"][i] / rates["k=0"][i] for i in range(args.repeats))
        held_out = []
        for pick, score in ((0, 1), (1, 0)):  # choose on one half of the repeats, measure on the other
            chosen = max(fixed, key=lambda n: statistics.median(rates[n][pick::2]))
            held_out.append(statistics.median(a / b for a, b in zip(rates["adaptive"][score::2],
                                                                     rates[chosen][score::2])))
        ad = last["adaptive"]
        row = {"case": case, "batch": b, "tokens_per_s": med, "best_fixed": best,
               "adaptive_vs_best_fixed_paired_median": statistics.median(paired),
               "adaptive_vs_best_fixed_paired": paired, "adaptive_vs_best_fixed_interval_90": median_interval(paired),
               "adaptive_vs_k0": med["adaptive"] / med["k=0"],
               "adaptive_vs_best_fixed_held_out": sum(held_out) / 2, "control_vs_k0_paired_median": control,
               "k3_vs_k0": med["k=3"] / med["k=0"],
               "acceptance_length": {n: last[n].acceptance_length for n in rates},
               "adaptive_drafts_per_step": ad.drafts_per_step, "adaptive_accepted": ad.accepted,
               "adaptive_drafted": ad.drafted, "policy": engines["adaptive"].speculation_stats()}
        rows.append(row)
        print(f"  {case:<28} batch {b}: " + "  ".join(f"{n} {med[n]:6.1f}" for n in med)
              + f"  | adaptive/best fixed ({best}) {row['adaptive_vs_best_fixed_paired_median']:.3f}x "
              f"[90% interval {row['adaptive_vs_best_fixed_interval_90'][0]:.3f}-"
              f"{row['adaptive_vs_best_fixed_interval_90'][1]:.3f}] "
              f"(held out {row['adaptive_vs_best_fixed_held_out']:.3f}x; control/k=0 {control:.3f}x), "
              f"adaptive/k=0 {row['adaptive_vs_k0']:.2f}x, k=3/k=0 {row['k3_vs_k0']:.2f}x; adaptive drafts per "
              f"step {ad.drafts_per_step}", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: the shipped models/mimo-nano)")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs per setting before the timed ones")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    runtime.configure(threads=args.threads)
    info = measured()
    print(describe(info), flush=True)
    path = resolve_model_dir(args.model)
    tok = Tokenizer.from_pretrained(path)
    batches = [int(x) for x in args.batches.split(",")]
    code = third_party_code(tok, max(batches), args.prompt_tokens)
    cases = {f"third-party code, batch {b}": [code[i % len(code)] for i in range(b)] for b in batches}
    cases["README: def fibonacci(n):"] = [tok.encode("def fibonacci(n):")]
    result = {"machine": info, "threads": torch.get_num_threads(), "new_tokens": args.new_tokens,
              "repeats": args.repeats, "warmup": args.warmup, "models": {}}
    for label, fix in (("mimo-nano", None), ("mimo-nano, MTP re-initialised", reinitialised_mtp)):
        model = MiMoForCausalLM.from_pretrained(path)
        if fix is not None:
            model = fix(model)
        prepare_for_inference(model)
        print(f"{label}:", flush=True)
        result["models"][label] = measure(model, cases, args)
    every = [r for rows in result["models"].values() for r in rows]
    worst = min(r["adaptive_vs_best_fixed_paired_median"] for r in every)
    result["worst_adaptive_vs_best_fixed"] = worst
    result["worst_adaptive_vs_best_fixed_held_out"] = min(r["adaptive_vs_best_fixed_held_out"] for r in every)
    result["control_vs_k0_range"] = [min(r["control_vs_k0_paired_median"] for r in every),
                                     max(r["control_vs_k0_paired_median"] for r in every)]
    print(f"worst adaptive / best fixed over every case: {worst:.3f}x (held out "
          f"{result['worst_adaptive_vs_best_fixed_held_out']:.3f}x); the control k=0 / k=0 ranged "
          f"{result['control_vs_k0_range'][0]:.3f}-{result['control_vs_k0_range'][1]:.3f}x")
    write_json(args.json_out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
