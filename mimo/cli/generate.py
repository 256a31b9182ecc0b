"""``mimo generate``: complete a prompt, streaming text to the terminal."""

from __future__ import annotations

import argparse
import sys
import time

from mimo.cli.engine_args import add_engine_arguments, engine_config, run_worker, worker_rank
from mimo.utils.paths import resolve_model_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt_text", nargs="?", help="the prompt ('-' reads it from standard input; or use --prompt)")
    p.add_argument("--prompt", help="the prompt text ('-' reads it from standard input)")
    p.add_argument("--model", help="model directory (default: the shipped models/mimo-nano)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--stats", action="store_true", help="print speed and MTP acceptance to stderr")
    add_engine_arguments(p, batch=False)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from mimo.engine.llm import LLM
    from mimo.engine.params import SamplingParams

    if worker_rank():  # torchrun: rank 0 generates and prints, this rank runs its part of the model
        return run_worker(args, resolve_model_dir(args.model))
    prompt = args.prompt if args.prompt is not None else args.prompt_text
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt:
        raise ValueError("give a prompt: mimo generate 'def fib(n):'  (or --prompt TEXT, or - to read standard input)")
    llm = LLM(resolve_model_dir(args.model), dtype=args.dtype, compute_dtype=args.compute_dtype, mmap=args.mmap,
              engine_config=engine_config(args))
    if llm.tokenizer is None:
        raise ValueError("this model directory has no tokenizer.json; mimo generate needs one")
    llm.engine.warmup()  # the request's steps (and the speculation policy's timings) then cost what later ones do
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, max_tokens=args.max_tokens, seed=args.seed, stop=args.stop,
    )
    sys.stdout.write(prompt)
    sys.stdout.flush()
    if args.compile:
        print("[compiling the decode step: the first tokens wait for it (about a minute on 2 cores, "
              "less once inductor's on-disk cache is warm)]", file=sys.stderr)
    t0 = time.perf_counter()
    t_first = None
    n = 0
    last = None
    bar = None

    def prefill(done: int, total: int) -> None:
        # A prompt of several prefill chunks takes a while before the first token: show how far it got.
        nonlocal bar
        if bar is None and total > llm.engine.prefill_chunk:
            bar = tqdm(total=total, desc="prefill", unit="tok", leave=False, file=sys.stderr)
        if bar is not None:
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

    for delta in llm.stream(prompt, params, on_prefill=prefill):
        sys.stdout.write(delta.text)
        sys.stdout.flush()
        if t_first is None and delta.token_ids:
            t_first = time.perf_counter()
        n += len(delta.token_ids)
        last = delta
    sys.stdout.write("\n")
    sys.stdout.flush()
    dt = time.perf_counter() - t0
    if args.stats:
        st = llm.last_output.stats if llm.last_output else None
        extra = ""
        if st and args.mtp:
            from mimo.engine.outputs import drafts_histogram

            hist = drafts_histogram(st.drafts_per_step)
            extra = (f"; acceptance length {st.acceptance_length:.2f}; {st.accepted}/{st.drafted} drafts accepted; "
                     f"steps by drafts {hist} ({args.speculative_policy})")
        after = ""
        if t_first is not None and n > 1 and t0 + dt > t_first:
            after = f" (first token after {t_first - t0:.2f}s, then {(n - 1) / (t0 + dt - t_first):.1f} tok/s)"
        print(f"[{n} tokens in {dt:.2f}s = {n / dt:.1f} tok/s{after}; finish: {last.finish_reason if last else None}"
              f"{extra}]", file=sys.stderr)
    return 0
