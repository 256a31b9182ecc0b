"""mimo's decode kernels per instruction set: GB/s of weights read, this checkout against another commit's kernels.

For each ``--isa`` (``native``: what this CPU has; ``avx2``: built with ``MIMO_KERNEL_ISA=avx2``, i.e. without
AVX-512, as on AVX2-only CPUs) a child process builds this checkout's kernels and, with ``--base REF``, the
kernels of commit REF under the op namespace ``mimo_base`` (same flags, same ISA), then times, interleaved:

* ``linear_decode`` / ``linear_decode_fp8`` at 1 and 8 rows on 4096 x 4096 weights (fp32, bf16, FP8 with
  128 x 128 blocks), cycling over enough copies that every call reads from memory, not cache;
* ``moe_decode`` / ``moe_decode_fp8`` at 1 and 8 tokens on bench-preset experts (64 experts, hidden 512,
  intermediate 256, top-8), cycling over several layers' worth of experts and routings (cold experts).

GB/s counts the weight bytes a call reads (distinct chosen experts for the MoE). ``b8/b1`` is the 8-row
throughput over the 1-row one (8 x time(1) / time(8)). Both ratios (head/base, b8/b1) are medians of ratios
taken within a round, where base and head at 1 and 8 rows run back to back: this machine's speed drifts by
more over a minute than the differences looked for. Builds and warm-up calls are never timed. Prints the
CPU, its vector ISA, the build's ISA and the read bandwidth of a 256 MB fp32 mat-vec; JSON with --json-out.

    .venv/bin/python benchmarks/kernel_isa.py --base b9caa13 --json-out benchmarks/results/kernel-isa.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from functools import partial

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _machine import describe, measured  # noqa: E402
from _results import write_json  # noqa: E402

LINEAR = (4096, 4096)  # N, K
MOE = dict(experts=64, hidden=512, inter=256, top_k=8)  # the bench preset's routed experts
POOL_BYTES = 320 * 2**20  # weights cycled over per measurement: ten times this machine's 32 MB L3
BYTES = {"fp32": 4, "bf16": 2, "fp8": 1}


# ------------------------------------------------------------------------------------------ the child process
def build_base(ref: str, flags: list[str], root: str) -> bool:
    """Commit ``ref``'s kernel sources, renamed to the op namespace ``mimo_base``, built with ``flags``."""
    from torch.utils import cpp_extension

    names = subprocess.run(["git", "ls-tree", "--name-only", ref, "mimo/ops/kernels/"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    files = {}
    for path in names:
        if path.endswith((".cpp", ".h")):
            text = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=REPO, check=True, capture_output=True,
                                  text=True).stdout
            for macro in ("TORCH_LIBRARY", "TORCH_LIBRARY_FRAGMENT", "TORCH_LIBRARY_IMPL"):
                text = text.replace(f"{macro}(mimo,", f"{macro}(mimo_base,")
            files[os.path.basename(path)] = text
    key = hashlib.sha1(json.dumps([files, flags]).encode()).hexdigest()[:10]
    build_dir = os.path.join(root, f"mimo_base_{key}")
    os.makedirs(build_dir, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(build_dir, name), "w") as f:
            f.write(text)
    cpp_extension.load(name=f"mimo_base_{key}", build_directory=build_dir, extra_cflags=flags,
                       sources=[os.path.join(build_dir, n) for n in files if n.endswith(".cpp")],
                       extra_ldflags=["-fopenmp"], is_python_module=False)
    return True


def timed(calls: dict, repeats: int) -> dict:
    """calls: {(side, rows): [(fn, bytes)]}. Runs every list once untimed, then ``repeats`` rounds, the lists'
    order rotating from round to round; -> {(side, rows): seconds per call in each round}."""
    for fns in calls.values():
        for fn, _ in fns:
            fn()
    samples = {name: [] for name in calls}
    names = list(calls)
    for rnd in range(repeats):
        for name in names[rnd % len(names):] + names[: rnd % len(names)]:
            fns = calls[name]
            t = time.perf_counter()
            for fn, _ in fns:
                fn()
            samples[name].append((time.perf_counter() - t) / len(fns))
    return samples


def summarise(kernel: str, dtype: str, calls: dict, samples: dict) -> list[dict]:
    """One row per number of rows: median time and GB/s per side, and the ratios taken within each round
    (head/base, 8 rows over 1 row), whose medians are robust to this machine's drift."""
    def med(xs):
        return statistics.median(xs)

    out = []
    sides = sorted({side for side, _ in calls})
    for m in sorted({m for _, m in calls}):
        r = {"kernel": kernel, "dtype": dtype, "rows": m}
        for side in sides:
            s, fns = samples[(side, m)], calls[(side, m)]
            r[f"{side}_ms"] = med(s) * 1e3
            r[f"{side}_gbs"] = sum(b for _, b in fns) / len(fns) / med(s) / 1e9
            r[f"{side}_samples_ms"] = [x * 1e3 for x in s]
            if m == 8 and (side, 1) in samples:  # 8 x time(1 row) / time(8 rows), per round
                r[f"{side}_b8_over_b1"] = med([8 * a / b for a, b in zip(samples[(side, 1)], s)])
        if "base" in sides:
            r["head_over_base"] = med([b / h for b, h in zip(samples[("base", m)], samples[("head", m)])])
        out.append(r)
    return out


def fp8_quantize(shape, gen, block=128):
    """Random e4m3 codes (no NaN) and a uniform block grid of scales for them."""
    import torch

    w = (torch.randn(shape, generator=gen) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
    grid = (*shape[:-2], math.ceil(shape[-2] / block), math.ceil(shape[-1] / block))
    return w, torch.rand(grid, generator=gen) * 1e-3 + 1e-4


def child(args: argparse.Namespace) -> dict:
    import torch

    from mimo.ops import kernels

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    assert kernels.load(), "mimo's kernels did not build"
    base = bool(args.base) and build_base(args.base, kernels._flags(), str(kernels.build_directory().parent))
    ops = {"head": torch.ops.mimo}
    if base:
        ops["base"] = torch.ops.mimo_base
    fp8_ops = {side: o for side, o in ops.items() if hasattr(o, "linear_decode_fp8")}  # a base before FP8 has none
    gen = torch.Generator().manual_seed(0)
    rows = []

    # linear maps: 4096 x 4096, enough copies to stream POOL_BYTES per pass
    n, k = LINEAR
    for dtype in ("fp32", "bf16", "fp8"):
        copies = max(2, POOL_BYTES // (n * k * BYTES[dtype]))
        if dtype == "fp8":
            one = fp8_quantize((n, k), gen)
            ws = [tuple(t.clone() for t in one) for _ in range(copies)]  # the same values in distinct memory
            ri = (torch.arange(n) // 128).int()
        else:
            one = torch.randn(n, k, generator=gen).to(torch.float32 if dtype == "fp32" else torch.bfloat16)
            ws = [one.clone() for _ in range(copies)]
        calls = {}
        for m in (1, 8):
            x = torch.randn(m, k, generator=gen)
            if dtype == "fp8":
                for side, o in fp8_ops.items():
                    calls[(side, m)] = [(partial(o.linear_decode_fp8, x, w, s, ri, 128), n * k) for w, s in ws]
            else:
                x = x.to(ws[0].dtype)
                for side, o in ops.items():
                    calls[(side, m)] = [(partial(o.linear_decode, x, w), n * k * BYTES[dtype]) for w in ws]
        rows += summarise("linear_decode", dtype, calls, timed(calls, args.repeats))
        for r in rows[-2:]:
            print(_line(r), flush=True)
        del ws, one

    # routed experts: bench preset, several layers, fresh routings (cold experts)
    e, d, i, top = MOE["experts"], MOE["hidden"], MOE["inter"], MOE["top_k"]
    per_expert = 3 * i * d
    for dtype in ("fp32", "bf16", "fp8"):
        layers = max(2, POOL_BYTES // (e * per_expert * BYTES[dtype]))
        if dtype == "fp8":
            one = (*fp8_quantize((e, i, d), gen), *fp8_quantize((e, i, d), gen), *fp8_quantize((e, d, i), gen))
        else:
            tdt = torch.float32 if dtype == "fp32" else torch.bfloat16
            one = tuple((torch.randn(s, generator=gen) * 0.05).to(tdt) for s in ((e, i, d), (e, i, d), (e, d, i)))
        lw = [tuple(t.clone() for t in one) for _ in range(layers)]
        calls = {}
        for t in (1, 8):
            x = torch.randn(t, d, generator=gen)
            if dtype == "bf16":
                x = x.bfloat16()
            routes = []
            for c in range(4 * layers):
                experts = torch.rand(t, e, generator=gen).topk(top, dim=-1).indices
                weights = torch.rand(t, top, generator=gen)
                used = experts.unique().numel()
                routes.append((lw[c % layers], weights, experts, used * per_expert * BYTES[dtype]))
            if dtype == "fp8":
                for side, o in fp8_ops.items():
                    calls[(side, t)] = [(partial(o.moe_decode_fp8, x, w[0], w[2], w[4], w[1], w[3], w[5], 128, 128,
                                                 wt, ex), b) for w, wt, ex, b in routes]
            else:
                for side, o in ops.items():
                    calls[(side, t)] = [(partial(o.moe_decode, x, *w, wt, ex), b) for w, wt, ex, b in routes]
        rows += summarise("moe_decode", dtype, calls, timed(calls, args.repeats))
        for r in rows[-2:]:
            print(_line(r), flush=True)
        del lw, one
    return {"isa": os.environ.get("MIMO_KERNEL_ISA", "native"), "built": kernels.built_isa(),
            "base": args.base, "rows": rows}


def _line(r: dict) -> str:
    base = f"{r['base_gbs']:6.1f}" if "base_gbs" in r else "     -"
    ratio = f"{r['head_over_base']:5.2f}x" if "head_over_base" in r else "     -"
    b8 = "".join(f"   {side} b8/b1 {r[f'{side}_b8_over_b1']:.2f}x" for side in ("base", "head") if f"{side}_b8_over_b1" in r)
    return (f"  {r['kernel']:14} {r['dtype']:5} {r['rows']:>2} rows   base {base} GB/s   head {r['head_gbs']:6.1f} GB/s"
            f"   head/base {ratio}{b8}")


# ------------------------------------------------------------------------------------------ the parent
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--isa", nargs="+", default=["native", "avx2"], choices=["native", "avx2"])
    p.add_argument("--base", help="a commit whose kernels to measure beside this checkout's (e.g. b9caa13)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json-out")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0

    info = measured()
    print(describe(info))
    result = {"machine": info, "threads": args.threads, "repeats": args.repeats, "builds": []}
    for isa in args.isa:
        print(f"\nkernels built for {isa} (MIMO_KERNEL_ISA={isa})", flush=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--threads", str(args.threads),
               "--repeats", str(args.repeats)] + (["--base", args.base] if args.base else [])
        env = dict(os.environ, MIMO_KERNEL_ISA=isa, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        build = None
        for line in proc.stdout:
            if line.startswith("RESULT "):
                build = json.loads(line[len("RESULT "):])
            else:
                print(line, end="", flush=True)
        if proc.wait() != 0 or build is None:
            print(f"the {isa} run failed")
            return 1
        print(f"  built: {build['built']}")
        result["builds"].append(build)
    write_json(args.json_out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
