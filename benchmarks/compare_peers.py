"""mimo's engine side by side with transformers' ``generate`` and llama.cpp, one checkpoint, same threads, one run.

Prints a table and ratios; writes JSON with --json-out. The decode limit on a CPU is memory
bandwidth: a batch-1 step reads every active weight once, so the script measures the read
bandwidth of a 256 MB matrix-vector product and prints tokens/s <= bandwidth / bytes per token.

llama.cpp runs in its own interpreter (``--llama-python``, a venv with llama-cpp-python, torch
and transformers 4.x; see benchmarks/README.md), converted by its own converter
(``--llama-converter``), because its converter cannot read configs with transformers 5 installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _results import write_json  # noqa: E402

from mimo.checkpoint import MiMoForCausalLM  # noqa: E402
from mimo.config import preset  # noqa: E402
from mimo.eval.speed import measure_decode, measure_prefill, prompts_for  # noqa: E402
from mimo.model.sizes import parameter_counts  # noqa: E402
from mimo.tokenizer import Tokenizer, train_bpe  # noqa: E402


def _best(fn, n: int = 5) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def read_bandwidth(mb: int = 256) -> float:
    """Bytes/s read by a matrix-vector product over an ``mb`` MB fp32 matrix (what decode does)."""
    w = torch.randn(mb * 2**20 // 4 // 4096, 4096)
    x = torch.randn(1, 4096)
    return w.numel() * 4 / _best(lambda: F.linear(x, w))


def copy_bandwidth(mb: int = 256) -> float:
    """Bytes/s of a large tensor copy, read + write counted."""
    src = torch.empty(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _best(lambda: dst.copy_(src))


def write_tokenizer(path: str, vocab_size: int) -> None:
    """A byte-level BPE of exactly ``vocab_size`` tokens (llama.cpp's converter needs a tokenizer)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    texts = []
    for root, _, files in os.walk(stdlib):
        for name in sorted(files):
            if name.endswith(".py") and len(texts) < 1500:
                with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
                    texts.append(f.read())
    tok = Tokenizer(train_bpe(texts, vocab_size))
    if tok.vocab_size != vocab_size:
        raise RuntimeError(f"trained {tok.vocab_size} tokens, wanted {vocab_size}: give it more text")
    tok.save_pretrained(path)


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
    return length / _best(lambda: ref(ids, logits_to_keep=1), 3)


def llamacpp(args: argparse.Namespace, path: str, outtype: str) -> dict:
    side = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_llamacpp_side.py")
    cmd = [args.llama_python, side, "--model-dir", path, "--converter", args.llama_converter, "--outtype", outtype,
           "--threads", str(args.threads), "--prefill-tokens", str(args.prefill_tokens),
           "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {f"{k}_{outtype}" if k.endswith("_tps") else k: v for k, v in json.loads(out.splitlines()[-1]).items()}


def mimo_side(path: str, dtype: torch.dtype, args: argparse.Namespace) -> dict:
    model = MiMoForCausalLM.from_pretrained(path, dtype=dtype)
    model.set_attention_backend("sdpa")
    tag = {torch.float32: "", torch.bfloat16: "_bf16"}[dtype]
    res = {f"mimo_prefill_tps{tag}": measure_prefill(model, args.prefill_tokens)}
    for compile in (False, True) if args.compile else (False,):
        for b in (1, 8):
            prompts = prompts_for(model, b, args.prompt_len)
            r = measure_decode(model, b, args.new_tokens, 0, args.prompt_len, prompts, compile=compile)
            res[f"mimo{'_compiled' if compile else ''}_decode_b{b}_tps{tag}"] = r.tokens_per_s
    return res


def one_round(path: str, args: argparse.Namespace) -> dict:
    res = mimo_side(path, torch.float32, args)
    if args.bf16:
        res.update(mimo_side(path, torch.bfloat16, args))
    if not args.no_transformers:
        import transformers

        res["transformers_version"] = transformers.__version__
        res["transformers_prefill_tps"] = transformers_prefill(path, args.prefill_tokens)
        vocab = MiMoForCausalLM.from_pretrained(path).config.vocab_size
        for b in (1, 8):
            res[f"transformers_decode_b{b}_tps"] = transformers_decode(path, b, args.new_tokens, args.prompt_len, vocab)
    if args.llama_python:
        res.update(llamacpp(args, path, "f32"))
        if args.bf16:
            res.update(llamacpp(args, path, "bf16"))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--model", help="a model directory instead of a random preset")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="also measure bf16 weights (mimo, and llama.cpp if given)")
    ap.add_argument("--compile", action="store_true", help="also measure the torch.compile'd decode (Engine(compile=True))")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--llama-python", help="python of a venv with llama-cpp-python (skip llama.cpp if absent)")
    ap.add_argument("--llama-converter", help="vendor/llama.cpp/convert_hf_to_gguf.py of the llama-cpp-python sdist")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds; the best of each is kept")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if bool(args.llama_python) != bool(args.llama_converter):
        ap.error("--llama-python and --llama-converter go together")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            path = args.model
        else:
            model = MiMoForCausalLM.from_config(preset(args.preset), seed=0)
            path = tmp
            model.save_pretrained(path)
            if args.llama_python:
                write_tokenizer(path, model.config.vocab_size)
            del model
        res: dict = {"model": args.model or f"preset:{args.preset}", "threads": args.threads,
                     "torch": torch.__version__, "rounds": args.rounds}
        samples: dict[str, list[float]] = {}
        for r in range(args.rounds):  # interleaved rounds, best of each: a shared machine's load comes and goes
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
            got = one_round(path, args)
            got["read_bandwidth_bytes_per_s"] = read_bandwidth()
            for k, v in got.items():
                if isinstance(v, float):
                    samples.setdefault(k, []).append(v)
                else:
                    res[k] = v
        res.update({k: max(v) for k, v in samples.items()})
        res["samples"] = samples
        cfg = MiMoForCausalLM.from_pretrained(path).config
    pc = parameter_counts(cfg)
    bytes_per_token = (pc.active - pc.embedding) * 4 + cfg.hidden_size * 4  # one embedding row is read, not the table
    bw = res["read_bandwidth_bytes_per_s"]
    res["copy_bandwidth_bytes_per_s"] = copy_bandwidth()
    res["active_weight_bytes_per_token_fp32"] = bytes_per_token
    res["bandwidth_bound_decode_b1_tps"] = bound = bw / bytes_per_token
    for mine in ("mimo", "mimo_compiled"):
        if f"{mine}_decode_b1_tps" not in res:
            continue
        res[f"{mine}_b1_fraction_of_bound"] = res[f"{mine}_decode_b1_tps"] / bound
        res[f"{mine}_b8_over_b1"] = res[f"{mine}_decode_b8_tps"] / res[f"{mine}_decode_b1_tps"]
        for peer in ("transformers", "llamacpp"):
            for what in ("prefill", "decode_b1", "decode_b8"):
                theirs = res.get(f"{peer}_{what}_tps") or res.get(f"{peer}_{what}_tps_f32")
                ours = res.get(f"{mine}_{what}_tps", res.get(f"mimo_{what}_tps"))
                if theirs and (what != "prefill" or mine == "mimo"):
                    res[f"ratio_{mine}_{what}_vs_{peer}"] = ours / theirs
    if "llamacpp_decode_b1_tps_f32" in res:
        res["llamacpp_b1_fraction_of_bound"] = res["llamacpp_decode_b1_tps_f32"] / bound
    for k, v in res.items():
        if k != "samples":
            print(f"{k:>48}: {v:.3g}" if isinstance(v, float) else f"{k:>48}: {v}")
    write_json(args.json_out, res)


if __name__ == "__main__":
    main()
