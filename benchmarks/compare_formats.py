"""Weight formats side by side, one checkpoint, one run: mimo with the release's FP8 (e4m3 + 128x128 block
scales, kept as FP8), bf16 and fp32 weights, against llama.cpp Q8_0, F16 and F32 converted from the same
checkpoint.

For every format: prefill tokens/s, batch-1 decode tokens/s (and batch 8 for mimo; llama-cpp-python decodes
one sequence), the bytes a batch-1 decode step reads (from the files: FP8 codes and scales, the bf16 o_proj
and head the release keeps, the top-k experts, one embedding row; GGUF tensor sizes for llama.cpp), the
bandwidth bound (measured read bandwidth / those bytes) and the fraction of it reached.

Decode on a CPU is bound by memory, unless turning the stored numbers into fp32 is slower than reading them
(e4m3 on an AVX2-only CPU, see the FP8 notes): the script also measures each format's compute ceiling, the
decode kernel's rate over a weight that stays in cache, and says which bound applies.

``--pairs N`` sets of back-to-back measurements (order rotating) give the ratios as medians within a set;
the best of the sets is reported for scale. Compilation and warm-up are never timed.

    .venv/bin/python benchmarks/compare_formats.py --pairs 5 [--compile] \\
        --llama-python .llamacpp/venv/bin/python \\
        --llama-converter .llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _machine import cpu_info, describe, read_bandwidth  # noqa: E402
from _results import write_json  # noqa: E402
from compare_peers import LlamaServer, write_tokenizer  # noqa: E402

from mimo.checkpoint import MiMoForCausalLM  # noqa: E402
from mimo.checkpoint.memory_plan import loaded_bytes, stored_tensors  # noqa: E402
from mimo.config import MiMoConfig, preset  # noqa: E402
from mimo.engine.engine import Engine  # noqa: E402
from mimo.engine.llm import prepare_for_inference  # noqa: E402
from mimo.eval.speed import decode_run, measure_prefill, prompts_for  # noqa: E402
from mimo.ops import kernels  # noqa: E402
from mimo.ops.fp8 import quantize_block_fp8, scale_rows  # noqa: E402
from mimo.ops.linear import linear  # noqa: E402
from mimo.utils import runtime  # noqa: E402

# mimo format -> (checkpoint, load dtype), and the llama.cpp format read at about the same bytes per weight
FORMATS = {"fp8": ("fp8", "auto"), "bf16": ("wide", "bfloat16"), "fp32": ("wide", "float32")}
PEER = {"fp8": "q8_0", "bf16": "f16", "fp32": "f32"}


def bytes_per_token(path: str, dtype: str) -> int:
    """Bytes a batch-1 decode step of mimo reads with this checkpoint loaded as ``dtype`` (no MTP)."""
    cfg = MiMoConfig.from_pretrained(path)
    tensors, _ = stored_tensors(path, cfg)
    total = 0.0
    for t in tensors:
        b = loaded_bytes(t, dtype)
        if ".mtp." in t.name:
            continue
        if t.name.startswith("model.embed_tokens."):
            b /= t.shape[0]  # one row
        elif ".mlp.experts." in t.name:
            b *= cfg.num_experts_per_tok / cfg.n_routed_experts
        total += b
    return int(total)


def kernel_ceiling(fmt: str, seconds: float = 1.0) -> float:
    """Weight bytes/s the decode kernel turns into a batch-1 product when the weight sits in cache (an 8 MB
    matrix in bf16 terms: L2 + L3, not DRAM): the rate at which conversion, not memory, would bound decode."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2048, 2048, generator=g) * 0.02
    x = torch.randn(1, 2048, generator=g)
    if fmt == "fp8":
        w, scale = quantize_block_fp8(w)
        args = (scale, scale_rows(2048, 2048 // 128, 128), 128)
    else:
        w, args = w.to(getattr(torch, {"bf16": "bfloat16", "fp32": "float32"}[fmt])), ()
    nbytes = w.numel() * w.element_size()
    with torch.no_grad():
        for _ in range(20):
            linear(x, w, *args)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            linear(x, w, *args)
            n += 1
    return nbytes * n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--pairs", type=int, default=5, help="sets of back-to-back measurements (default 5)")
    ap.add_argument("--compile", action="store_true", help="mimo's decode through torch.compile (compiled untimed)")
    ap.add_argument("--formats", default="fp8,bf16,fp32", help="mimo formats to measure (default all three)")
    ap.add_argument("--llama-python", help="python of a venv with llama-cpp-python (skip llama.cpp if absent)")
    ap.add_argument("--llama-converter", help="vendor/llama.cpp/convert_hf_to_gguf.py of the llama-cpp-python sdist")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if bool(args.llama_python) != bool(args.llama_converter):
        ap.error("--llama-python and --llama-converter go together")
    formats = [f for f in args.formats.split(",") if f]
    if not formats or set(formats) - set(FORMATS):
        ap.error(f"--formats takes a comma-separated subset of {', '.join(FORMATS)}")
    runtime.configure(threads=args.threads)
    kernels.load()
    machine = cpu_info()
    res: dict = {"preset": args.preset, "threads": args.threads, "torch": torch.__version__, "compile": args.compile,
                 "kernels": kernels.status(), "pairs": args.pairs}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {"wide": os.path.join(tmp, "wide"), "fp8": os.path.join(tmp, "fp8")}
        print("writing the checkpoints", file=sys.stderr, flush=True)
        model = MiMoForCausalLM.from_config(preset(args.preset), seed=0)
        model.save_pretrained(dirs["wide"])
        model.save_pretrained(dirs["fp8"], quantization="fp8")
        if args.llama_python:
            write_tokenizer(dirs["wide"], model.config.vocab_size)
        del model

        measures: dict = {}
        bpt: dict[str, int] = {}
        engines = []
        for fmt in formats:
            where, dtype = FORMATS[fmt]
            m = MiMoForCausalLM.from_pretrained(dirs[where], dtype=dtype)
            prepare_for_inference(m)
            bpt[f"mimo_{fmt}"] = bytes_per_token(dirs[where], dtype)
            measures[f"mimo_{fmt}_prefill_tps"] = lambda m=m: measure_prefill(m, args.prefill_tokens, repeats=1)
            for b in (1, 8):
                eng = Engine(m, max_num_seqs=b, compile=args.compile)
                engines.append(eng)
                prompts = prompts_for(m, b, args.prompt_len)
                measures[f"mimo_{fmt}_decode_b{b}_tps"] = (
                    lambda eng=eng, prompts=prompts: decode_run(eng, prompts, args.new_tokens))
        servers = []
        if args.llama_python:
            for fmt in formats:
                out = PEER[fmt]
                print(f"llama.cpp {out}: converting and loading", file=sys.stderr, flush=True)
                srv = LlamaServer(dirs["wide"], args, out)
                servers.append(srv)
                bpt[f"llamacpp_{out}"] = srv.info["bytes_per_token"]
                res[f"llamacpp_{out}_gguf_bytes"] = srv.info["gguf_bytes"]
                measures[f"llamacpp_{out}_decode_b1_tps"] = lambda srv=srv: srv.ask("decode")
                measures[f"llamacpp_{out}_prefill_tps"] = lambda srv=srv: srv.ask("prefill")

        def rate(name: str) -> float | None:
            got = measures[name]()
            if hasattr(got, "graphs_compiled"):
                return None if got.graphs_compiled else got.tokens_per_s  # a run that compiled is not a figure
            return got

        print("warming up (compiling where asked)", file=sys.stderr, flush=True)
        for name in measures:
            rate(name)
            rate(name)  # a compiled engine's first run compiles; the second must not (else it is discarded below)
        names = list(measures)
        samples: dict[str, list[float | None]] = {n: [] for n in names}
        bandwidth = []
        for i in range(args.pairs):
            print(f"set {i + 1}/{args.pairs}", file=sys.stderr, flush=True)
            bandwidth.append(read_bandwidth())
            for n in names[i % len(names):] + names[: i % len(names)]:
                samples[n].append(rate(n))
        for srv in servers:
            srv.close()

    bw = statistics.median(bandwidth)  # one probe per set; a quiet or a busy moment moves a single one
    machine["read_bandwidth_bytes_per_s"] = bw
    res["machine"] = describe(machine)
    res["read_bandwidth_bytes_per_s"] = {"median": bw, "all": bandwidth}
    res["bytes_per_token"] = bpt
    res["samples"] = samples
    best = {n: max(v for v in s if v is not None) for n, s in samples.items() if any(v is not None for v in s)}
    res["best"] = best
    res["bound_tps"] = {k: bw / v for k, v in bpt.items()}
    res["fraction_of_bound"] = {}
    for fmt in formats:
        res["fraction_of_bound"][f"mimo_{fmt}"] = best[f"mimo_{fmt}_decode_b1_tps"] / res["bound_tps"][f"mimo_{fmt}"]
        peer = f"llamacpp_{PEER[fmt]}"
        if f"{peer}_decode_b1_tps" in best:
            res["fraction_of_bound"][peer] = best[f"{peer}_decode_b1_tps"] / res["bound_tps"][peer]
    print("measuring the kernels' compute ceilings", file=sys.stderr, flush=True)
    res["kernel_ceiling_bytes_per_s"] = {fmt: kernel_ceiling(fmt) for fmt in formats}
    res["bound_applies"] = {fmt: "memory" if res["kernel_ceiling_bytes_per_s"][fmt] > bw else "conversion"
                            for fmt in formats}

    def ratio(a: str, b: str) -> dict | None:
        pairs = [x / y for x, y in zip(samples.get(a, []), samples.get(b, [])) if x and y]
        return {"median": statistics.median(pairs), "min": min(pairs), "max": max(pairs)} if pairs else None

    ratios = {}
    for fmt in formats:
        ratios[f"mimo_{fmt}_b8_over_b1"] = ratio(f"mimo_{fmt}_decode_b8_tps", f"mimo_{fmt}_decode_b1_tps")
        for what in ("decode_b1", "prefill"):
            ratios[f"mimo_{fmt}_vs_llamacpp_{PEER[fmt]}_{what}"] = ratio(f"mimo_{fmt}_{what}_tps",
                                                                        f"llamacpp_{PEER[fmt]}_{what}_tps")
    if "fp8" in formats and "fp32" in formats:
        ratios["mimo_fp8_vs_mimo_fp32_decode_b1"] = ratio("mimo_fp8_decode_b1_tps", "mimo_fp32_decode_b1_tps")
    res["paired_ratios"] = {k: v for k, v in ratios.items() if v}

    print(f"\n{res['machine']}; {args.threads} threads; {'compiled' if args.compile else 'eager'} mimo decode")
    print(f"{'format':<18} {'bytes/token':>12} {'bound tok/s':>12} {'b1 tok/s':>9} {'of bound':>9} "
          f"{'b8 tok/s':>9} {'prefill':>8}")
    for key in bpt:
        b1, b8 = best.get(f"{key}_decode_b1_tps"), best.get(f"{key}_decode_b8_tps")
        pf = best.get(f"{key}_prefill_tps")
        print(f"{key:<18} {bpt[key] / 1e6:>10.1f}MB {res['bound_tps'][key]:>12.1f} {b1 or 0:>9.1f} "
              f"{(b1 or 0) / res['bound_tps'][key]:>8.0%} {b8 or 0:>9.1f} {pf or 0:>8.0f}")
    for fmt in formats:
        print(f"kernel ceiling {fmt}: {res['kernel_ceiling_bytes_per_s'][fmt] / 1e9:.1f} GB/s of weights in cache "
              f"vs {bw / 1e9:.1f} GB/s from memory: {res['bound_applies'][fmt]} bounds decode")
    for k, v in res["paired_ratios"].items():
        print(f"{k:>44}: {v['median']:.2f}x (sets {v['min']:.2f}-{v['max']:.2f})")
    write_json(args.json_out, res)


if __name__ == "__main__":
    main()
