"""mimo's engine vs transformers' generate on one checkpoint, same threads, one run.

Prints a table and ratios; writes JSON with --json-out. Also prints the memory-bandwidth bound
for batch-1 decode (bytes of active weights read per token / measured copy bandwidth).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _results import write_json  # noqa: E402

from mimo.checkpoint import MiMoForCausalLM  # noqa: E402
from mimo.config import preset  # noqa: E402
from mimo.eval.speed import measure_decode, measure_prefill, prompts_for  # noqa: E402
from mimo.model.sizes import parameter_counts  # noqa: E402


def copy_bandwidth(mb: int = 512) -> float:
    """Bytes/s of a large tensor copy (read + write counted), best of 5."""
    src = torch.empty(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best


@torch.no_grad()
def transformers_decode(path: str, batch: int, new_tokens: int, prompt_len: int, vocab: int) -> float:
    import transformers

    ref = transformers.MiMoV2FlashForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (batch, prompt_len), generator=g)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=None, pad_token_id=0)
    ref.generate(ids, max_new_tokens=2, **kw)  # warm-up
    t = time.perf_counter()
    ref.generate(ids, max_new_tokens=1, **kw)
    prefill = time.perf_counter() - t
    t = time.perf_counter()
    ref.generate(ids, max_new_tokens=new_tokens, **kw)
    return batch * (new_tokens - 1) / (time.perf_counter() - t - prefill)


@torch.no_grad()
def transformers_prefill(path: str, length: int) -> float:
    import transformers

    ref = transformers.MiMoV2FlashForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    ids = torch.randint(2, ref.config.vocab_size, (1, length))
    ref(ids)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        ref(ids, logits_to_keep=1)
        best = min(best, time.perf_counter() - t)
    return length / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--model", help="a model directory instead of a random preset")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            path = args.model
            model = MiMoForCausalLM.from_pretrained(path)
        else:
            model = MiMoForCausalLM.from_config(preset(args.preset), seed=0)
            path = tmp
            model.save_pretrained(path)
        model.set_attention_backend("sdpa")
        cfg = model.config
        res: dict = {"model": args.model or f"preset:{args.preset}", "threads": args.threads, "dtype": "float32"}
        res["mimo_prefill_tps"] = measure_prefill(model, args.prefill_tokens)
        res["transformers_prefill_tps"] = transformers_prefill(path, args.prefill_tokens)
        for b in (1, 8):
            prompts = prompts_for(model, b, args.prompt_len)
            res[f"mimo_decode_b{b}_tps"] = measure_decode(model, b, args.new_tokens, 0, args.prompt_len, prompts).tokens_per_s
            res[f"transformers_decode_b{b}_tps"] = transformers_decode(path, b, args.new_tokens, args.prompt_len,
                                                                       cfg.vocab_size)
    pc = parameter_counts(cfg)
    bytes_per_token = (pc.active - pc.embedding) * 4 + cfg.hidden_size * 4  # one embedding row is read, not the table
    bw = copy_bandwidth()
    res["bandwidth_bytes_per_s"] = bw
    res["active_weight_bytes_per_token"] = bytes_per_token
    res["bandwidth_bound_decode_b1_tps"] = bw / bytes_per_token
    res["ratio_prefill"] = res["mimo_prefill_tps"] / res["transformers_prefill_tps"]
    res["ratio_decode_b1"] = res["mimo_decode_b1_tps"] / res["transformers_decode_b1_tps"]
    res["ratio_decode_b8"] = res["mimo_decode_b8_tps"] / res["transformers_decode_b8_tps"]
    res["mimo_b8_over_b1"] = res["mimo_decode_b8_tps"] / res["mimo_decode_b1_tps"]
    res["mimo_b1_fraction_of_bound"] = res["mimo_decode_b1_tps"] / res["bandwidth_bound_decode_b1_tps"]
    for k, v in res.items():
        print(f"{k:>34}: {v:.3g}" if isinstance(v, float) else f"{k:>34}: {v}")
    write_json(args.json_out, res)


if __name__ == "__main__":
    main()
