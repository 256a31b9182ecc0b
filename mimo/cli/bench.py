"""``mimo bench``: prefill tokens/s, batch-1 and batch-8 decode tokens/s with and without MTP, cache bytes."""

from __future__ import annotations

import argparse
import json

from mimo.cli.engine_args import add_compute_dtype, add_speculative_policy


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="model directory (default: the shipped models/mimo-nano)")
    src.add_argument("--preset", help="benchmark a randomly initialised preset instead (e.g. bench)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto (default): a model's weights as stored, a preset in float32; or convert")
    add_compute_dtype(p)
    p.add_argument("--device", default="cpu", help="where to run, e.g. cuda (default cpu)")
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batches", default="1,8", help="comma-separated decode batch sizes (default 1,8)")
    p.add_argument("--mtp", type=int, default=None, help="MTP draft tokens to compare against 0 (default: all blocks)")
    add_speculative_policy(p)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="decode through torch.compile (compiled untimed first)")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, metavar="N",
                   help="split the model over N processes started here (decode through the engine over ranks)")
    p.add_argument("--enable-expert-parallel", action="store_true",
                   help="with --tensor-parallel-size: split the routed experts by expert")
    p.add_argument("--json-out", help="also write the results to this JSON file")


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from mimo.checkpoint import MiMoForCausalLM
    from mimo.config import preset
    from mimo.engine.llm import prepare_for_inference
    from mimo.eval.speed import measure_decode, measure_prefill
    from mimo.model.sizes import speculative_bound_speedup
    from mimo.utils import runtime
    from mimo.utils.machine import device_description, read_bandwidth
    from mimo.utils.paths import resolve_model_dir

    if args.tensor_parallel_size > 1:
        return _run_parallel(args)
    runtime.configure(threads=args.threads)
    dtype = torch.float32 if args.dtype == "auto" else getattr(torch, args.dtype)
    prompts = None
    if args.preset:
        model = MiMoForCausalLM.from_config(preset(args.preset), seed=0, dtype=dtype, device=args.device)
        name = f"preset:{args.preset}"
    else:
        path = resolve_model_dir(args.model)
        model, name = MiMoForCausalLM.from_pretrained(path, dtype=args.dtype).to(args.device), path
        prompts = _code_prompts(path)
    prepare_for_inference(model, compute_dtype=args.compute_dtype)
    k = model.config.num_mtp_layers if args.mtp is None else args.mtp
    batches = [int(x) for x in args.batches.split(",")]
    runs = [(b, mtp) for b in batches for mtp in sorted({0, k})]
    result = {"model": name, "dtype": args.dtype, "threads": torch.get_num_threads(), "compile": args.compile,
              "machine": device_description(args.device), "decode": []}
    if args.device in (None, "cpu"):
        result["read_bandwidth_bytes_per_s"] = read_bandwidth()
        result["machine"] += f", read bandwidth {result['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s"
    print(f"model {name} ({args.dtype}, {result['threads']} threads{', compiled decode' if args.compile else ''}) "
          f"on {result['machine']}")
    # Each figure is printed as soon as it is measured; the bar (stderr) counts the measurements.
    with tqdm(total=1 + len(runs), desc="measuring", unit="run", leave=False) as bar:
        result["prefill_tokens_per_s"] = measure_prefill(model, args.prefill_tokens)
        bar.update(1)
        bar.write(f"prefill: {result['prefill_tokens_per_s']:.0f} tokens/s ({args.prefill_tokens}-token prompt)")
        bar.write(f"{'batch':>5} {'mtp':>3} {'tokens/s':>9} {'accept len':>10} {'cache/request':>14} "
                  f"{'vs mtp 0':>9} {'bound':>6}  drafts per step (row-steps)")
        plain = None
        for b, mtp in runs:
            r = measure_decode(model, b, args.new_tokens, mtp, prompts=prompts, compile=args.compile,
                               policy=args.speculative_policy).as_dict()
            if mtp == 0:
                plain = r["tokens_per_s"]
            else:  # what the bytes allow: batch-1 decode is memory-bound, and the verify reads more experts
                r["speedup_vs_mtp0"] = r["tokens_per_s"] / plain
                if b == 1:
                    r["bandwidth_bound_speedup"] = speculative_bound_speedup(model.config, mtp, r["acceptance_length"])
            result["decode"].append(r)
            bar.update(1)
            vs = f"{r['speedup_vs_mtp0']:>8.2f}x" if "speedup_vs_mtp0" in r else f"{'':>9}"
            bound = f"{r['bandwidth_bound_speedup']:>5.2f}x" if "bandwidth_bound_speedup" in r else f"{'':>6}"
            bar.write(f"{r['batch']:>5} {r['mtp']:>3} {r['tokens_per_s']:>9.1f} {r['acceptance_length']:>10.2f} "
                      f"{r['cache_bytes_per_request'] / 1024:>11.1f} KiB {vs} {bound}  {_hist(r)}".rstrip())
    if k:
        print(f"drafts per step: how many MTP drafts the {args.speculative_policy} policy made per row and step "
              "(drafts:row-steps), and how many of them were accepted")
    if any("bandwidth_bound_speedup" in r for r in result["decode"]):
        print("bound: the batch-1 MTP speed-up that bytes allow at this acceptance length (k MTP blocks and "
              "lm_heads, then a verify whose tokens pick more experts; see `mimo info`)")
    print(json.dumps(result))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _run_parallel(args: argparse.Namespace) -> int:
    """The same figures over ``--tensor-parallel-size`` ranks started here: one ``LLM`` per MTP setting, every
    batch decoded by its engine (an untimed run first: warm-up and, with --compile, compilation)."""
    import tempfile

    import torch

    from mimo.checkpoint import MiMoForCausalLM
    from mimo.config import MiMoConfig, preset
    from mimo.engine.llm import LLM
    from mimo.eval.speed import decode_run, prefill_run, prompts_for
    from mimo.parallel.group import from_environment
    from mimo.utils.machine import device_description, read_bandwidth
    from mimo.utils.paths import resolve_model_dir

    if from_environment() is not None:
        raise ValueError("mimo bench --tensor-parallel-size starts its own ranks: run it without torchrun")
    with tempfile.TemporaryDirectory() as tmp:
        if args.preset:
            MiMoForCausalLM.from_config(preset(args.preset), seed=0).save_pretrained(tmp)
            path, name, prompts = tmp, f"preset:{args.preset}", None
        else:
            path = name = str(resolve_model_dir(args.model))
            prompts = _code_prompts(path)
        cfg = MiMoConfig.from_pretrained(path)
        k = cfg.num_mtp_layers if args.mtp is None else args.mtp
        batches = [int(x) for x in args.batches.split(",")]
        layout = f"TP {args.tensor_parallel_size}" + (" + EP" if args.enable_expert_parallel else "")
        result: dict = {"model": name, "dtype": args.dtype, "layout": layout, "compile": args.compile,
                        "machine": device_description(args.device), "decode": []}
        if args.device in (None, "cpu"):
            result["read_bandwidth_bytes_per_s"] = read_bandwidth()
            result["machine"] += f", read bandwidth {result['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s"
        print(f"model {name} ({args.dtype}, {layout}) on {result['machine']}")
        for mtp in sorted({0, k}):
            with LLM(path, dtype=args.dtype, compute_dtype=args.compute_dtype, num_speculative_tokens=mtp,
                     speculative_policy=args.speculative_policy,
                     max_num_seqs=max(batches), compile=args.compile, device=None if args.device == "cpu" else
                     args.device, tensor_parallel_size=args.tensor_parallel_size,
                     enable_expert_parallel=args.enable_expert_parallel) as llm:
                result["threads_per_rank"] = torch.get_num_threads()
                if mtp == 0:
                    prefill_run(llm.engine, prompts_for(llm.model, 1, args.prefill_tokens)[0])
                    result["prefill_tokens_per_s"] = prefill_run(
                        llm.engine, prompts_for(llm.model, 1, args.prefill_tokens)[0])
                    print(f"prefill: {result['prefill_tokens_per_s']:.0f} tokens/s ({args.prefill_tokens}-token prompt)")
                for b in batches:
                    batch_prompts = prompts_for(llm.model, b, 32, source=prompts)
                    decode_run(llm.engine, batch_prompts, args.new_tokens)
                    r = decode_run(llm.engine, batch_prompts, args.new_tokens).as_dict()
                    result["decode"].append(r)
                    print(f"batch {b} mtp {mtp}: {r['tokens_per_s']:.1f} tokens/s, acceptance length "
                          f"{r['acceptance_length']:.2f}{'; ' + _hist(r) if mtp else ''}", flush=True)
    print(json.dumps(result))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _code_prompts(path: str) -> list[list[int]] | None:
    """Prompts from real code (held-out stdlib files) when the model has a tokenizer: MTP is never
    measured on random tokens, where nothing can be predicted."""
    import os

    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        return None
    from mimo.tokenizer import Tokenizer
    from mimo.training.data import split_files, stdlib_files

    tok = Tokenizer.from_pretrained(path)
    _, held = split_files(stdlib_files())
    out = []
    for _, abspath in held[:8]:
        with open(abspath, encoding="utf-8") as f:
            out.append(tok.encode(f.read()[:2000]))
    return out


def _hist(r: dict) -> str:
    """A decode run's drafts per step (drafts:row-steps) and accepted/drafted, for the tables."""
    if not r["mtp"]:
        return ""
    from mimo.engine.outputs import drafts_histogram

    hist = drafts_histogram({int(k): n for k, n in r["drafts_per_step"].items()})
    return f"{hist}; {r['accepted']}/{r['drafted']} accepted"
