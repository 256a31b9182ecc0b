"""``mimo info``: parameter counts (total, active per token, per MTP block), KV-cache bytes per token,
and the weights a decode step reads (batch 1, batch 8, speculative), which bound memory-bound decode."""

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


def _b(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.3f}M"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


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
    if args.json:
        print(json.dumps({
            "model": name, "parameters": {**pc.__dict__, "total_with_mtp": pc.total_with_mtp},
            "params_read_per_step": {"batch_1": one, "batch_8": eight,
                                     **{f"speculative_k{k}": v for k, v in spec.items()}},
            "kv_cache": {**kv.__dict__, "per_context": {str(c): {"hybrid": kv.total_bytes(c),
                                                                 "all_full": kv.total_bytes_all_full(c)}
                                                        for c in contexts}},
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
    print("\n".join(lines))
    return 0
