"""One process against the same model split over 2 (TP 2, TP 2 + EP 2), on this machine: decode tokens/s at
batch 1 and 8, and the share of a step rank 0 spends in collectives (all-reduce, all-gather, the plan's
broadcast), from torch.profiler.

On a 2-core CPU there is no speed-up to expect (each rank gets one core, and the ranks exchange activations
through gloo twice per layer); the point is the measured cost of communication per step, which is what
changes when the ranks are GPUs on NVLink. The bench preset's weights are random; nothing is downloaded.

    .venv/bin/python benchmarks/compare_parallel.py --json-out benchmarks/results/parallel-2ranks.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _machine import cpu_info, describe, read_bandwidth  # noqa: E402
from _results import write_json  # noqa: E402

from mimo import LLM  # noqa: E402
from mimo.checkpoint import MiMoForCausalLM  # noqa: E402
from mimo.config import preset  # noqa: E402
from mimo.eval.speed import decode_run, prefill_run, prompts_for  # noqa: E402

COMM = ("all_reduce", "all_gather", "broadcast", "wait_tensor", "allreduce", "allgather")


def comm_share(llm: LLM, prompts: list[list[int]], new_tokens: int) -> tuple[float, float, int]:
    """(seconds in collectives, seconds in all, decode steps) of one profiled decode run on rank 0."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        r = decode_run(llm.engine, prompts, new_tokens)
    comm = sum(e.self_cpu_time_total for e in prof.key_averages() if any(c in e.key.lower() for c in COMM)) / 1e6
    return comm, r.seconds, r.tokens // len(prompts)


LAYOUTS = {  # name -> LLM settings
    "1 process": {},
    "TP 2": {"tensor_parallel_size": 2},
    "TP 2 + EP 2": {"tensor_parallel_size": 2, "enable_expert_parallel": True},
    "TP 2 + EP 2 all-to-all": {"tensor_parallel_size": 2, "enable_expert_parallel": True, "expert_all_to_all_from": 1},
}


def measure(path: str, layout: str, args: argparse.Namespace) -> dict:
    settings = LAYOUTS[layout]
    tp = settings.get("tensor_parallel_size", 1)
    llm = LLM(path, dtype="float32", max_num_seqs=8, **settings)
    out: dict = {"layout": layout, "threads_per_rank": torch.get_num_threads()}
    try:
        long = prompts_for(llm.model, 1, args.prefill_tokens)[0]
        prefill_run(llm.engine, long)
        out["prefill_tps"] = max(prefill_run(llm.engine, long) for _ in range(args.repeats))
        for b in (1, 8):
            prompts = prompts_for(llm.model, b, args.prompt_len)
            decode_run(llm.engine, prompts, args.new_tokens)  # warm-up
            rates = [decode_run(llm.engine, prompts, args.new_tokens).tokens_per_s for _ in range(args.repeats)]
            out[f"decode_b{b}_tps"] = max(rates)
            out[f"decode_b{b}_tps_all"] = rates
            if tp > 1:
                comm, total, steps = comm_share(llm, prompts, args.new_tokens)
                out[f"b{b}_comm_ms_per_step"] = 1e3 * comm / steps
                out[f"b{b}_step_ms"] = 1e3 * total / steps
                out[f"b{b}_comm_share"] = comm / total
    finally:
        llm.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the best is kept")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    machine = cpu_info()
    machine["read_bandwidth_bytes_per_s"] = statistics.median(read_bandwidth() for _ in range(3))
    res: dict = {"preset": args.preset, "machine": describe(machine), "torch": torch.__version__, "layouts": []}
    print(res["machine"])
    with tempfile.TemporaryDirectory() as tmp:
        MiMoForCausalLM.from_config(preset(args.preset), seed=0).save_pretrained(tmp)
        for layout in LAYOUTS:
            print(f"measuring {layout}", file=sys.stderr, flush=True)
            r = measure(tmp, layout, args)
            res["layouts"].append(r)
            line = (f"{layout:<22} prefill {r['prefill_tps']:6.0f} tok/s   batch 1: {r['decode_b1_tps']:6.1f} tok/s   "
                    f"batch 8: {r['decode_b8_tps']:6.1f} tok/s")
            if "b1_comm_share" in r:
                line += (f"   collectives: {r['b1_comm_ms_per_step']:.1f} of {r['b1_step_ms']:.1f} ms per step at batch 1 "
                         f"({r['b1_comm_share']:.0%}), {r['b8_comm_ms_per_step']:.1f} of {r['b8_step_ms']:.1f} ms at "
                         f"batch 8 ({r['b8_comm_share']:.0%})")
            print(line, flush=True)
    write_json(args.json_out, res)


if __name__ == "__main__":
    main()
