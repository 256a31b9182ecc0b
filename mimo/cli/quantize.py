"""``mimo quantize``: write a model in the release's FP8 layout (e4m3 weights, block ``weight_scale_inv``).

What the release stores as FP8 is quantized (attention q/k/v, the dense MLPs, every routed expert, the MTP
blocks' attention and MLP), with one scale per ``--block`` x ``--block`` block (the full-attention k_proj
per KV head, as the release does); o_proj, eh_proj, the embedding and the head stay in ``--dtype`` (bf16),
the router in fp32. mimo loads the result with ``dtype="auto"`` and keeps it FP8 in memory. The model's
tokenizer, chat template and generation config are copied beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil

_BESIDE = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
           "special_tokens_map.json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="src", required=True, help="model directory in the Hugging Face layout")
    p.add_argument("--out", required=True, help="where to write the FP8 model (a new or empty directory)")
    p.add_argument("--block", type=int, default=128, help="scale block size, rows = columns (default 128)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="dtype of the tensors that stay unquantized (default bfloat16, as the release)")


def _size(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory) if f.endswith(".safetensors"))


def run(args: argparse.Namespace) -> int:
    import torch

    from mimo.checkpoint import MiMoForCausalLM

    if args.block < 1:
        raise ValueError(f"--block must be positive, got {args.block}")
    if os.path.abspath(args.src) == os.path.abspath(args.out):
        raise ValueError("--out must not be --in: write the FP8 model to a directory of its own")
    if os.path.isdir(args.out) and any(f.endswith(".safetensors") for f in os.listdir(args.out)):
        raise ValueError(f"{args.out} already holds a model; choose an empty directory")
    print(f"loading {args.src}", flush=True)
    model = MiMoForCausalLM.from_pretrained(args.src, progress=True)
    held = {getattr(m, "block", None) for m in model.modules() if getattr(m, "is_fp8", False)}
    if held and held != {(args.block, args.block)}:  # FP8 already, in other blocks: back to fp32, then re-quantize
        model.dequantize_(torch.float32)
    print(f"writing {args.out} (FP8 e4m3, {args.block}x{args.block} blocks; others {args.dtype})", flush=True)
    model.save_pretrained(args.out, quantization="fp8", block=args.block, dtype=getattr(torch, args.dtype))
    for name in _BESIDE:
        if os.path.exists(os.path.join(args.src, name)):
            shutil.copy2(os.path.join(args.src, name), os.path.join(args.out, name))
    before, after = _size(args.src), _size(args.out)
    print(f"{before / 1e6:.1f} MB -> {after / 1e6:.1f} MB ({after / before:.2f}x)")
    return 0
