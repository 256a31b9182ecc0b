"""What constrained decoding costs per token: the same greedy requests decoded free and under a grammar, paired.

Each set decodes ``--batch`` copies of a chat prompt twice, alternating the order: once free and once with every
row under a JSON-schema constraint (an array of integers), both for ``--tokens`` tokens ignoring EOS (where the
model closes the array first, the rest are stop tokens under a terminated grammar, which still pays the mask).
Reports decode tokens/s of each and the ratio (median of sets), with the CPU, its vector ISA and measured read bandwidth.
Compile and warm-up are outside the timed region: each engine runs one untimed request of each kind first.

    .venv/bin/python benchmarks/structured_overhead.py [--model models/mimo-nano-chat-sft] [--batch 1] [--sets 5]
        [--json-out benchmarks/results/structured-overhead.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._machine import describe, measured  # noqa: E402
from benchmarks._results import write_json  # noqa: E402
from mimo import LLM, SamplingParams, StructuredOutputsParams  # noqa: E402
from mimo.utils import runtime  # noqa: E402

ENDLESS = {"type": "array", "items": {"type": "integer"}}
PROMPT = "Please help: Return True for leap years, False for non-leap years. The arguments are year = 2013."


def timed(llm: LLM, prompts: list[str], params: SamplingParams) -> float:
    t = time.perf_counter()
    outs = llm.generate(prompts, params)
    seconds = time.perf_counter() - t
    assert all(len(o.outputs[0].token_ids) == params.max_tokens for o in outs)
    return sum(len(o.outputs[0].token_ids) for o in outs) / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/mimo-nano-chat-sft")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--sets", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    runtime.configure(threads=args.threads)
    machine = measured()
    llm = LLM(args.model, max_num_seqs=max(args.batch, 1))
    tok = llm.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    prompts = [prompt] * args.batch
    free = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    constrained = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True,
                                 structured_outputs=StructuredOutputsParams(json=ENDLESS))
    for p in (free, constrained):  # warm-up: first-call allocations, xgrammar's import and the grammar's compile
        timed(llm, prompts, p)
    rates: dict[str, list[float]] = {"free": [], "constrained": []}
    for s in range(args.sets):
        order = (("free", free), ("constrained", constrained)) if s % 2 == 0 else (("constrained", constrained),
                                                                                  ("free", free))
        for name, p in order:
            rates[name].append(timed(llm, prompts, p))
    ratio = statistics.median(c / f for c, f in zip(rates["constrained"], rates["free"]))
    result = {"model": args.model, "batch": args.batch, "tokens": args.tokens, "threads": args.threads,
              "machine": machine, "tokens_per_s": {k: statistics.median(v) for k, v in rates.items()},
              "sets": rates, "constrained_over_free": ratio}
    print(describe(machine))
    print(f"batch {args.batch}: free {result['tokens_per_s']['free']:.1f} tok/s, constrained "
          f"{result['tokens_per_s']['constrained']:.1f} tok/s, ratio {ratio:.3f} (median of {args.sets} sets)")
    write_json(args.json_out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
