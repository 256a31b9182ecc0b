"""``mimo info``: parameter counts (total, active per token, per MTP block), KV-cache bytes per token,
and the weights a decode step reads (batch 1, batch 8, speculative), which bound memory-bound decode.

``--plan`` adds a memory plan read from the checkpoint's headers (or its config and index alone, before
the shards are downloaded): weight bytes by dtype as stored, memory on one host for each load dtype, the
KV cache for a context and number of sequences, and per-device bytes for tensor/expert-parallel layouts."""

from __future__ import annotations

import argparse
import json

from mimo.config import FULL, SLIDING, MiMoConfig, preset
from mimo.model.sizes import kv_sizes, parameter_counts, params_read_per_step, speculative_params_per_step


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="a named config: flash (the released model), bench, tiny")
    src.add_argument("--model", help="a model directory in the Hugging Face layout (reads config.json only)")
    p.add_argument("--kv-dtype-bytes", type=int, default=2, help="bytes per cached K/V number (default 2: bf16)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    plan = p.add_argument_group("memory plan")
    plan.add_argument("--plan", action="store_true",
                      help="weights by dtype as stored, memory per load dtype, KV cache, per-device layouts")
    plan.add_argument("--context", type=int, default=32768, help="tokens per sequence for the KV cache (32768)")
    plan.add_argument("--seqs", type=int, default=8, help="sequences cached at once (8)")
    plan.add_argument("--devices", default="8",
                      help="device counts to lay the model out over, comma-separated (default 8)")
    plan.add_argument("--device-gb", type=float, default=141.0,
                      help="memory per device in GB (default 141: an H200)")


def _b(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.3f}M"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.2f} MB"


def _plan(cfg: MiMoConfig, directory: str | None, args: argparse.Namespace) -> dict:
    from mimo.checkpoint.memory_plan import (
        bytes_by_dtype,
        kv_bytes_per_device,
        layouts_for,
        loaded_bytes,
        per_device_bytes,
        stored_tensors,
    )

    if args.context < 1 or args.seqs < 1:
        raise ValueError("--context and --seqs must be positive")
    try:
        devices = sorted({int(d) for d in args.devices.split(",")})
    except ValueError:
        raise ValueError(f"--devices takes comma-separated counts, e.g. 4,8; got {args.devices!r}") from None
    if not devices or devices[0] < 1:
        raise ValueError("--devices must be positive")
    tensors, source = stored_tensors(directory, cfg)
    context = min(args.context, cfg.max_position_embeddings)
    host_kv = kv_sizes(cfg, args.kv_dtype_bytes).total_bytes(context) * args.seqs
    rows = []
    for n in devices:
        for lay in layouts_for(n):
            why = lay.invalid(cfg)
            w = None if why else per_device_bytes(cfg, tensors, lay)
            kv = None if why else kv_bytes_per_device(cfg, lay, context, args.seqs, args.kv_dtype_bytes)
            rows.append({"layout": lay.name, "devices": lay.devices, "tp": lay.tp, "ep": lay.ep, "dp": lay.dp,
                         "run_by_mimo": lay.mimo_runs_it,
                         "weights_bytes": w, "weights_bytes_bfloat16": None if why else
                         per_device_bytes(cfg, tensors, lay, "bfloat16"),
                         "kv_cache_bytes": kv, "free_bytes": None if why else args.device_gb * 1e9 - w - kv,
                         "invalid": why})
    return {
        "source": source,
        "stored": {k: {"bytes": b, "tensors": n} for k, (b, n) in bytes_by_dtype(tensors).items()},
        "stored_total_bytes": sum(t.nbytes for t in tensors),
        "one_host_weights_bytes": {d: sum(loaded_bytes(t, d) for t in tensors)
                                   for d in ("auto", "bfloat16", "float32")},
        "kv_cache": {"context": context, "seqs": args.seqs, "dtype_bytes": args.kv_dtype_bytes,
                     "one_host_bytes": host_kv},
        "device_gb": args.device_gb,
        "layouts": rows,
    }


def _plan_lines(p: dict) -> list[str]:
    kv = p["kv_cache"]
    lines = [f"memory plan (from {p['source']}; GB = 1e9 bytes)", "  weights as stored"]
    for dt, d in p["stored"].items():
        lines.append(f"    {dt:<15} {_gb(d['bytes']):>12}  ({d['tensors']} tensors)")
    lines += [f"    {'total':<15} {_gb(p['stored_total_bytes']):>12}",
              "  weights in memory on one host, by load dtype"]
    for dt, b in p["one_host_weights_bytes"].items():
        what = {"auto": "as stored, FP8 kept: the default", "bfloat16": "FP8 widened, scales dropped",
                "float32": "everything widened"}[dt]
        lines.append(f"    --dtype {dt:<9} {_gb(b):>12}  ({what})")
    lines.append(f"  KV cache: {kv['seqs']} sequence{'s' * (kv['seqs'] > 1)} x {kv['context']} tokens "
                 f"({kv['dtype_bytes']} bytes per number): {_gb(kv['one_host_bytes'])} on one host")
    lines += [f"  per device, {p['device_gb']:g} GB each (--dtype auto; KV cache as above, split as the layout "
              "splits it)",
              f"    {'layout':<24} {'weights':>10} {'(bf16)':>10} {'KV cache':>10} {'free':>10}"]
    for r in p["layouts"]:
        if r["invalid"]:
            lines.append(f"    {r['layout']:<24} not possible: {r['invalid']}")
            continue
        free = r["free_bytes"]
        lines.append(f"    {r['layout']:<24} {_gb(r['weights_bytes']):>10} {_gb(r['weights_bytes_bfloat16']):>10} "
                     f"{_gb(r['kv_cache_bytes']):>10} {_gb(free) if free >= 0 else 'over by ' + _gb(-free):>10}"
                     f"{'' if r['run_by_mimo'] else '  (not run by mimo)'}")
    lines.append("  (free: what is left for activations, the engine's workspace and the runtime itself; DP x TP rows "
                 "are SGLang's DP attention, for comparison: mimo runs TP and TP + EP)")
    return lines


def run(args: argparse.Namespace) -> int:
    if args.model:
        cfg = MiMoConfig.from_pretrained(args.model)
        name = args.model
    else:
        name = args.preset or "flash"
        cfg = preset(name)
    pc = parameter_counts(cfg)
    kv = kv_sizes(cfg, args.kv_dtype_bytes)
    contexts = [c for c in (4096, 32768, 262144) if c <= cfg.max_position_embeddings] or [cfg.max_position_embeddings]
    one, eight = params_read_per_step(cfg, 1), params_read_per_step(cfg, 8)
    spec = {k: speculative_params_per_step(cfg, k) for k in range(1, cfg.num_mtp_layers + 1)}
    plan = _plan(cfg, args.model, args) if args.plan else None
    if args.json:
        print(json.dumps({
            "model": name, "parameters": {**pc.__dict__, "total_with_mtp": pc.total_with_mtp},
            "params_read_per_step": {"batch_1": one, "batch_8": eight,
                                     **{f"speculative_k{k}": v for k, v in spec.items()}},
            "kv_cache": {**kv.__dict__, "per_context": {str(c): {"hybrid": kv.total_bytes(c),
                                                                 "all_full": kv.total_bytes_all_full(c)}
                                                        for c in contexts}},
            **({"plan": plan} if plan else {}),
        }, indent=2))
        return 0
    n_full, n_slide = kv.full_layers, kv.sliding_layers
    lines = [
        f"model: {name}",
        f"  layers: {cfg.num_hidden_layers} ({n_full} full attention, {n_slide} sliding window of "
        f"{cfg.sliding_window} keys), {len(cfg.moe_layers)} MoE ({cfg.n_routed_experts} experts, top-"
        f"{cfg.num_experts_per_tok}), {cfg.num_mtp_layers} MTP blocks",
        "parameters",
        f"  total (no MTP):                       {_b(pc.total)}",
        f"  total with {cfg.num_mtp_layers} MTP blocks:              {_b(pc.total_with_mtp)}",
        f"  active per token:                     {_b(pc.active)} (with embedding and lm_head)",
        f"  active per token, no embedding:       {_b(pc.active_no_embedding)}",
        f"  active per token, no embedding/head:  {_b(pc.active_no_embedding_or_head)}",
        f"  per MTP block:                        {_b(pc.per_mtp_block)}",
        f"  embedding / lm_head:                  {_b(pc.embedding)} / {_b(pc.lm_head)}",
        f"KV cache ({args.kv_dtype_bytes} bytes per number)",
        f"  full-attention layers:  {cfg.kv_values_per_token(FULL) * args.kv_dtype_bytes} B/token/layer, "
        f"{kv.bytes_per_token_full} B per token of context ({n_full} layers)",
        f"  sliding-window layers:  {cfg.kv_values_per_token(SLIDING) * args.kv_dtype_bytes} B/token/layer, "
        f"{kv.bytes_per_token_sliding} B per kept token ({n_slide} layers; at most {cfg.sliding_window} kept)",
        f"  MTP blocks (sliding):   {kv.bytes_per_token_mtp} B per kept token",
    ]
    for c in contexts:
        hy, full = kv.total_bytes(c), kv.total_bytes_all_full(c)
        lines.append(f"  one sequence at {c:>6} tokens: {_bytes(hy)} hybrid vs {_bytes(full)} if every layer "
                     f"were full ({full / hy:.2f}x)")
    lines += [
        "weights read per decode step (decode is memory-bound; routing taken as independent per token)",
        f"  batch 1:  {_b(one)} (active, no embedding)",
        f"  batch 8:  {_b(eight)}: {eight / one:.2f}x the bytes for 8x the tokens, so at most "
        f"{8 * one / eight:.2f}x batch 1's tokens/s at the bandwidth bound",
    ]
    for k, v in spec.items():
        lines.append(f"  MTP k={k}: {_b(v)} ({k} draft{'s' * (k > 1)} + a verify of {k + 1} tokens): pays only above an "
                     f"acceptance length of {v / one:.2f} (at most {k + 1})")
    if plan:
        lines += _plan_lines(plan)
    print("\n".join(lines))
    return 0
