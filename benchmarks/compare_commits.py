"""mimo against mimo: one commit's engine against another's, paired in one run (does a change regress speed?).

Each commit runs in its own interpreter from its own checkout (a git worktree made here, with its own
C++ kernel build), loads the same model once (a random ``--preset``, seed 0, or ``--model DIR``), and
answers one measurement per request: prefill tokens/s, and batch-1 and batch-8 greedy decode tokens/s,
eager and compiled (compiled steps are compiled and warmed before any timing), or (``--metrics train``) the
tokens/s of pre-training steps: a fresh model of the preset in fp32 with bf16 autocast, AdamW, the losses of
all heads, forward, backward and update on random tokens (``--train-batch`` rows of ``--train-seq``; a step is
run untimed before any timing). The run then takes ``--pairs``
sets of back-to-back measurements, the order rotating from set to set, and reports the median of the
head/base ratio taken within each set: this machine drifts by more over minutes than the differences
looked for. Prints the CPU and its vector ISA; writes every sample to JSON with ``--json-out``.

    .venv/bin/python benchmarks/compare_commits.py --base ab1717c --head HEAD --pairs 8 \\
        --json-out benchmarks/results/runtime-split-vs-before.json
    .venv/bin/python benchmarks/compare_commits.py --base bb81c80 --head 6c10358 --preset nano --metrics train
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
METRICS = ("prefill", "decode_b1", "decode_b8", "compiled_decode_b1", "compiled_decode_b8", "train")


class _Training:
    """Timed pre-training steps of a fresh fp32 model of ``preset`` (bf16 autocast, AdamW, every head's loss)."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from mimo.checkpoint import MiMoForCausalLM
        from mimo.config import preset
        from mimo.training.loss import LossConfig, compute_losses
        from mimo.training.optim import build_optimizer

        self.torch, self.compute_losses, self.cfg = torch, compute_losses, LossConfig()
        self.model = MiMoForCausalLM.from_config(preset(args.preset), seed=0)
        self.model.train()
        self.model.set_attention_backend("sdpa")
        self.opt = build_optimizer(self.model, 1e-3, 0.1)
        gen = torch.Generator().manual_seed(0)
        shape = (args.train_batch, args.train_seq + self.cfg.extra)
        self.batch = torch.randint(0, self.model.config.vocab_size, shape, generator=gen)
        self.tokens = args.train_batch * args.train_seq
        self.steps = args.train_steps
        self.step()  # untimed: first-touch allocations, AdamW's state

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self.torch.autocast("cpu", dtype=self.torch.bfloat16):
            out = self.compute_losses(self.model, self.batch, self.cfg)
        out["loss"].backward()
        self.opt.step()

    def tokens_per_s(self) -> float:
        t0 = time.perf_counter()
        for _ in range(self.steps):
            self.step()
        return self.steps * self.tokens / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ the side process
def side(args: argparse.Namespace) -> None:
    """Runs inside one checkout (``PYTHONPATH``): load once, then one JSON line per request on stdin."""
    import torch

    from mimo.checkpoint import MiMoForCausalLM
    from mimo.config import preset
    from mimo.engine.engine import Engine
    from mimo.eval.speed import decode_run, measure_prefill, prompts_for

    torch.set_num_threads(args.threads)
    wanted = args.metrics.split(",")
    try:  # the entry point's process settings and model preparation, where the checkout has them
        from mimo.engine.llm import prepare_for_inference
        from mimo.utils import runtime

        runtime.configure(threads=args.threads)
    except ImportError:  # older checkouts: the Engine constructor did both
        prepare_for_inference = None
    training = _Training(args) if "train" in wanted else None
    model = None  # an inference model only where an inference metric is asked for
    if wanted != ["train"]:
        model = (MiMoForCausalLM.from_config(preset(args.preset), seed=0) if args.preset
                 else MiMoForCausalLM.from_pretrained(args.model))
        if prepare_for_inference is not None:
            prepare_for_inference(model)
        else:
            model.set_attention_backend("sdpa")
    engines, prompts = {}, {}
    for compiled in (False, True):
        for b in (1, 8):
            if f"{'compiled_' if compiled else ''}decode_b{b}" in wanted:
                engines[(compiled, b)] = Engine(model, max_num_seqs=b, compile=compiled)
                prompts[b] = prompts_for(model, b, args.prompt_len)
    for (_, b), eng in engines.items():  # compile and warm every step shape before any timing
        decode_run(eng, prompts[b], args.new_tokens)
    if "prefill" in wanted:
        measure_prefill(model, args.prefill_tokens, repeats=1)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        what = line.strip()
        if what == "train":
            tps = training.tokens_per_s()
        elif what == "prefill":
            tps = measure_prefill(model, args.prefill_tokens, repeats=1)
        else:
            compiled, b = what.startswith("compiled_"), int(what.rsplit("_b", 1)[1])
            tps = decode_run(engines[(compiled, b)], prompts[b], args.new_tokens).tokens_per_s
        print(json.dumps({"tps": tps}), flush=True)


# ------------------------------------------------------------------------------------------ the driver
class Side:
    def __init__(self, ref: str, tree: str, args: argparse.Namespace) -> None:
        self.ref = ref
        env = {**os.environ, "PYTHONPATH": tree, "TORCH_EXTENSIONS_DIR": os.path.join(tree, ".torch_extensions")}
        cmd = [sys.executable, os.path.join(HERE, "compare_commits.py"), "--side", "--threads", str(args.threads),
               "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
               "--prefill-tokens", str(args.prefill_tokens), "--metrics", args.metrics, "--train-batch",
               str(args.train_batch), "--train-seq", str(args.train_seq), "--train-steps", str(args.train_steps)]
        cmd += ["--preset", args.preset] if args.preset else ["--model", args.model]
        self.proc = subprocess.Popen(cmd, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"the side of {self.ref} exited ({self.proc.wait()})")
        return json.loads(line)

    def ask(self, what: str) -> float:
        self.proc.stdin.write(what + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self._read()["tps"]

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait()


def checkout(ref: str, root: str) -> tuple[str, str]:
    sha = subprocess.run(["git", "rev-parse", ref], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()
    tree = os.path.join(root, sha[:10])
    subprocess.run(["git", "worktree", "add", "--detach", "-q", tree, sha], cwd=REPO, check=True)
    return sha, tree


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="HEAD~1", help="the commit to compare against (default HEAD~1)")
    p.add_argument("--head", default="HEAD")
    p.add_argument("--preset", default="bench", help="a random preset (default bench)")
    p.add_argument("--model", help="or a model directory")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--metrics", default=",".join(METRICS[:-1]),
                   help=f"comma-separated subset of {', '.join(METRICS)} (default: all but train)")
    p.add_argument("--train-batch", type=int, default=16, help="train: rows a step (default 16, as nano pre-trains)")
    p.add_argument("--train-seq", type=int, default=512, help="train: tokens a row (default 512)")
    p.add_argument("--train-steps", type=int, default=3, help="train: steps a measurement (default 3)")
    p.add_argument("--json-out")
    p.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.model:
        args.preset = None
    if args.side:
        side(args)
        return 0
    metrics = [m for m in args.metrics.split(",") if m]
    if not metrics or any(m not in METRICS for m in metrics):
        p.error(f"--metrics must name some of {', '.join(METRICS)}")
    sys.path.insert(0, HERE)
    from _machine import describe, measured
    from _results import write_json

    machine = measured()
    print(describe(machine), flush=True)
    root = tempfile.mkdtemp(prefix="mimo-commits-")
    trees = {}
    try:
        for name, ref in (("base", args.base), ("head", args.head)):
            trees[name] = checkout(ref, root)
            print(f"{name}: {ref} = {trees[name][0][:10]} (loading and compiling...)", flush=True)
        sides = {name: Side(ref, tree, args) for name, (ref, tree) in trees.items()}
        samples = {f"{n}_{m}": [] for n in sides for m in metrics}
        order = [(n, m) for m in metrics for n in sides]
        for i in range(args.pairs):
            for n, m in order[i % len(order):] + order[: i % len(order)]:
                samples[f"{n}_{m}"].append(sides[n].ask(m))
            print(f"set {i + 1}/{args.pairs}: " + ", ".join(
                f"{m} {samples['head_' + m][-1] / samples['base_' + m][-1]:.2f}x" for m in metrics), flush=True)
        for s in sides.values():
            s.close()
    finally:
        for _, tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=REPO, check=False)
        shutil.rmtree(root, ignore_errors=True)
    result = {"machine": machine, "base": trees["base"][0], "head": trees["head"][0], "preset": args.preset,
              "model": args.model, "threads": args.threads, "pairs": args.pairs, "samples": samples, "ratios": {},
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"\n{'tokens/s':20} {'base':>9} {'head':>9} {'head/base (median of sets, range)':>36}")
    for m in metrics:
        ratios = [h / b for h, b in zip(samples["head_" + m], samples["base_" + m])]
        result["ratios"][m] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        print(f"{m:20} {statistics.median(samples['base_' + m]):9.1f} {statistics.median(samples['head_' + m]):9.1f} "
              f"{statistics.median(ratios):14.3f}x ({min(ratios):.2f}-{max(ratios):.2f})")
    write_json(args.json_out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
