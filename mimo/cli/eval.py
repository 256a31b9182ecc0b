"""``mimo eval``: held-out loss and bits per byte (with unigram and zlib baselines), MTP accuracy, acceptance length."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import tempfile
from dataclasses import asdict

from mimo.cli.engine_args import add_compute_dtype


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory with tokenizer files (default: the shipped models/mimo-nano)")
    p.add_argument("--seq-len", type=int, default=512, help="scoring window in tokens (default 512)")
    p.add_argument("--max-files", type=int, default=None, help="score only the first N held-out files")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="leave out held-out files whose relative path matches (repeatable), e.g. 'encodings/cp*'")
    p.add_argument("--prefix-tokens", type=int, default=96, help="prompt length for acceptance length (default 96)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt (default 64)")
    p.add_argument("--max-prompts", type=int, default=16)
    p.add_argument("--no-unigram", action="store_true", help="skip the unigram baseline (it tokenizes the train split)")
    p.add_argument("--cache-dir", default=None, help="token cache for the unigram baseline (default: a temp dir)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights dtype: auto (default) as stored, or convert")
    add_compute_dtype(p)
    p.add_argument("--json-out", help="also write the report as JSON")
    p.add_argument("--acceptance-plot", metavar="PATH",
                   help="also write acceptance length against next-token entropy, beside the paper's fit, as "
                        "PATH.png and PATH.json")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from mimo.checkpoint import MiMoForCausalLM
    from mimo.engine.llm import prepare_for_inference
    from mimo.engine.outputs import drafts_histogram
    from mimo.eval.acceptance import plot_entropy, speculation_report
    from mimo.eval.lm import score_files, unigram_bits_per_byte
    from mimo.tokenizer import Tokenizer
    from mimo.training.data import build_token_cache, split_files, stdlib_files
    from mimo.utils import runtime
    from mimo.utils.paths import resolve_model_dir

    runtime.configure()

    path = resolve_model_dir(args.model)
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        raise ValueError(f"{path} has no tokenizer.json; mimo eval needs the model's tokenizer")
    model = MiMoForCausalLM.from_pretrained(path, dtype=args.dtype)
    prepare_for_inference(model, compute_dtype=args.compute_dtype)
    tok = Tokenizer.from_pretrained(path)
    train, held = split_files(stdlib_files())
    held = [(rel, p) for rel, p in held if not any(fnmatch.fnmatch(rel, g) for g in args.exclude)]
    held = held[: args.max_files] if args.max_files else held
    if not held:
        raise ValueError("no held-out files left to score")
    texts = []
    for _, abspath in held:
        with open(abspath, encoding="utf-8") as f:
            texts.append(f.read())
    # Each figure is printed as soon as it is known; the stages show their own progress bars (stderr).
    report = score_files(model, tok, texts, args.seq_len)
    print(f"held-out: {report.files} files, {report.tokens} tokens, {report.bytes} bytes")
    print(f"  loss {report.loss_nats_per_token:.4f} nats/token, {report.bits_per_byte:.4f} bits/byte")
    print(f"  zlib -9 {report.zlib_bits_per_byte:.4f} bits/byte")
    for k, acc in enumerate(report.mtp_top1_accuracy, 1):
        print(f"  MTP depth {k} top-1 accuracy {acc:.4f}")
    if not args.no_unigram:
        with tempfile.TemporaryDirectory() as tmp:
            tokens = build_token_cache(tok, train, args.cache_dir or tmp)
            report.unigram_bits_per_byte = unigram_bits_per_byte(tokens, tok, texts)
        print(f"  unigram baseline {report.unigram_bits_per_byte:.4f} bits/byte")

    def show(name: str, r) -> None:
        if name == "k=0":
            what = "plain decode k=0"
        else:
            hist = drafts_histogram(r.drafts_per_step)
            what = (f"{'adaptive (at most ' + str(model.config.num_mtp_layers) + ')' if name == 'adaptive' else name}"
                    f": acceptance length {r.acceptance_length:.3f} tokens per decode forward (greedy), "
                    f"{r.accepted}/{r.drafted} drafts accepted, steps by drafts {hist}")
        tqdm.write(f"  {what}, {r.tokens_per_s:.1f} tokens/s")

    spec = speculation_report(model, tok, texts, args.prefix_tokens, args.new_tokens, args.max_prompts, on_result=show)
    if spec is not None:
        kmax = model.config.num_mtp_layers
        runs, plain = spec.runs, spec.runs["k=0"]
        report.acceptance_length = {int(n[2:]): r.acceptance_length for n, r in runs.items() if n[:2] == "k=" and n != "k=0"}
        report.tokens_per_s = {n: r.tokens_per_s for n, r in runs.items()}
        report.speculative_speedup = runs[f"k={kmax}"].tokens_per_s / plain.tokens_per_s
        report.speculative_outputs_identical = all(r.outputs == plain.outputs for r in runs.values())
        ad = runs["adaptive"]
        best = max((n for n in runs if n != "adaptive"), key=lambda n: runs[n].tokens_per_s)
        report.adaptive = {"acceptance_length": ad.acceptance_length, "drafted": ad.drafted, "accepted": ad.accepted,
                           "drafts_per_step": ad.drafts_per_step, "speedup_vs_k0": ad.tokens_per_s / plain.tokens_per_s,
                           "vs_best_fixed": ad.tokens_per_s / runs[best].tokens_per_s, "best_fixed": best}
        report.depth_acceptance = spec.depth_acceptance
        report.entropy = spec.entropy
        print(f"  wall-clock decode speed k={kmax} vs k=0: {report.speculative_speedup:.2f}x; adaptive vs k=0: "
              f"{report.adaptive['speedup_vs_k0']:.2f}x, vs the best fixed ({best}): "
              f"{report.adaptive['vs_best_fixed']:.2f}x; outputs identical: {report.speculative_outputs_identical}")
        print("  at k={}: draft acceptance per depth (given the earlier ones were accepted) {}".format(
            kmax, ", ".join(f"{a:.3f}" for a in spec.depth_acceptance)))
        for b in spec.entropy["per_step_bins"]:
            to = f"{b['entropy_to']:.2f}" if b["entropy_to"] is not None else "inf"
            print(f"  entropy {b['entropy_from']:.2f}-{to} nats: {b['steps']} steps, acceptance length "
                  f"{b['acceptance_length']:.2f} (the paper's fit at their mean entropy {b['mean_entropy']:.3f}: "
                  f"{b['paper_fit']:.2f})")
        if args.acceptance_plot:
            plot_entropy(spec.entropy, args.acceptance_plot + ".png")
            with open(args.acceptance_plot + ".json", "w") as f:
                json.dump({"depth_acceptance": spec.depth_acceptance, **spec.entropy}, f, indent=2)
            print(f"  wrote {args.acceptance_plot}.png and {args.acceptance_plot}.json")
    print(json.dumps(asdict(report)))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(asdict(report), f, indent=2)
    return 0
