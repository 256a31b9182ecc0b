"""Where a speculative request's time goes, step by step: prefill steps, steady steps of the full batch, and
the ragged end where rows that accepted more drafts have finished.

For k = 0, fixed k = 1 and 3, and the adaptive policy, it decodes the same batch of third-party code prompts
(``compare_speculation.py``'s) a few times on one engine each and groups every step's wall time by
(prefill or not, rows decoding, drafts): what the steady step times the policy learns from leave out.

    .venv/bin/python benchmarks/speculation_steps.py [--batch 8] [--repeats 3] [--json-out F]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _machine import describe, measured  # noqa: E402
from _results import write_json  # noqa: E402
from compare_speculation import third_party_code  # noqa: E402

from mimo.checkpoint import MiMoForCausalLM  # noqa: E402
from mimo.engine.engine import Engine  # noqa: E402
from mimo.engine.llm import prepare_for_inference  # noqa: E402
from mimo.eval.speed import decode_run  # noqa: E402
from mimo.tokenizer import Tokenizer  # noqa: E402
from mimo.utils import runtime  # noqa: E402
from mimo.utils.paths import resolve_model_dir  # noqa: E402

SETTINGS = [("k=0", 0, "fixed"), ("k=1", 1, "fixed"), ("k=3", 3, "fixed"), ("adaptive", 3, "adaptive")]


def instrument(eng: Engine, log: list) -> None:
    """Record (kind, seconds) for every step: kind is 'prefill', or 'rows x drafts' of a decode step."""
    execute, step = eng.runner.execute, eng.step
    seen: dict = {}

    def spy(plan):
        seen["plan"] = plan
        return execute(plan)

    def timed():
        seen.clear()
        t = time.perf_counter()
        out = step()
        dt = time.perf_counter() - t
        plan = seen.get("plan")
        if plan is not None:
            drafts = max((r.drafts for r in plan.decode), default=0)
            log.append(("prefill" if plan.prefill else f"{len(plan.decode)} rows x {drafts}", dt))
        return out

    eng.runner.execute = spy
    eng.step = timed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: the shipped models/mimo-nano)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    runtime.configure(threads=args.threads)
    info = measured()
    print(describe(info), flush=True)
    path = resolve_model_dir(args.model)
    tok = Tokenizer.from_pretrained(path)
    code = third_party_code(tok, args.batch, args.prompt_tokens)
    prompts = [code[i % len(code)] for i in range(args.batch)]
    model = MiMoForCausalLM.from_pretrained(path)
    prepare_for_inference(model)
    result = {"machine": info, "batch": args.batch, "new_tokens": args.new_tokens, "settings": {}}
    for name, k, policy in SETTINGS:
        eng = Engine(model, num_speculative_tokens=k, speculative_policy=policy, max_num_seqs=args.batch)
        decode_run(eng, prompts, args.new_tokens)  # warm-up (and the adaptive policy's first timings)
        log: list = []
        instrument(eng, log)
        rates = []
        for _ in range(args.repeats):
            rates.append(decode_run(eng, prompts, args.new_tokens).tokens_per_s)
        groups = collections.defaultdict(list)
        for kind, dt in log:
            groups[kind].append(dt)
        total = sum(dt for _, dt in log)
        full = f"{args.batch} rows x"
        share = {"prefill": sum(groups["prefill"]) / total,
                 "full batch": sum(sum(v) for g, v in groups.items() if g.startswith(full)) / total}
        share["ragged end"] = 1 - share["prefill"] - share["full batch"]
        result["settings"][name] = {
            "tokens_per_s": statistics.median(rates), "time_share": share,
            "steps": {g: {"count": len(v) / args.repeats, "median_ms": statistics.median(v) * 1e3}
                      for g, v in sorted(groups.items())}}
        print(f"{name:<9} {statistics.median(rates):7.1f} tok/s   time: prefill {share['prefill']:.0%}, full batch "
              f"{share['full batch']:.0%}, ragged end {share['ragged end']:.0%}   steps per request: "
              + ", ".join(f"{g} {len(v) / args.repeats:.0f} x {statistics.median(v) * 1e3:.2f} ms"
                          for g, v in sorted(groups.items())), flush=True)
    if args.json_out:
        write_json(args.json_out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
