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
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _machine import matvec_bandwidth, read_bandwidth  # noqa: E402
from _results import write_json  # noqa: E402

from mimo.checkpoint import MiMoForCausalLM  # noqa: E402
from mimo.config import preset  # noqa: E402
from mimo.engine.engine import Engine  # noqa: E402
from mimo.engine.llm import prepare_for_inference  # noqa: E402
from mimo.eval.speed import decode_run, measure_decode, measure_prefill, prompts_for  # noqa: E402
from mimo.model.sizes import parameter_counts  # noqa: E402
from mimo.tokenizer import Tokenizer, train_bpe  # noqa: E402
from mimo.utils import runtime  # noqa: E402


def _best(fn, n: int = 5) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


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


def transformers_model(path: str):
    import transformers

    return transformers.MiMoV2FlashForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


@torch.no_grad()
def transformers_decode_rate(ref, batch: int, new_tokens: int, prompt_len: int) -> float:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, ref.config.vocab_size, (batch, prompt_len), generator=g)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=None, pad_token_id=0)
    ref.generate(ids, max_new_tokens=2, **kw)  # warm-up
    t = time.perf_counter()
    ref.generate(ids, max_new_tokens=1, **kw)
    prefill = time.perf_counter() - t
    t = time.perf_counter()
    ref.generate(ids, max_new_tokens=new_tokens, **kw)
    return batch * (new_tokens - 1) / (time.perf_counter() - t - prefill)


@torch.no_grad()
def transformers_prefill_rate(ref, length: int, repeats: int = 3) -> float:
    ids = torch.randint(2, ref.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    ref(ids)
    return length / _best(lambda: ref(ids, logits_to_keep=1), repeats)


def _llama_cmd(args: argparse.Namespace, path: str, outtype: str) -> list[str]:
    side = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_llamacpp_side.py")
    return [args.llama_python, side, "--model-dir", path, "--converter", args.llama_converter, "--outtype", outtype,
            "--threads", str(args.threads), "--prefill-tokens", str(args.prefill_tokens),
            "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens)]


def llamacpp(args: argparse.Namespace, path: str, outtype: str) -> dict:
    out = subprocess.run(_llama_cmd(args, path, outtype), check=True, capture_output=True, text=True).stdout
    return {f"{k}_{outtype}" if k.endswith("_tps") else k: v for k, v in json.loads(out.splitlines()[-1]).items()}


class LlamaServer:
    """llama.cpp loaded once in its own interpreter (``_llamacpp_side.py --serve``), converted to ``outtype``
    (f32, f16, bf16, q8_0): one measurement per request. ``info``: the GGUF's size and the bytes a batch-1
    decode step reads from it."""

    def __init__(self, path: str, args: argparse.Namespace, outtype: str = "f32") -> None:
        self.proc = subprocess.Popen(_llama_cmd(args, path, outtype) + ["--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.info = self._read()
        self._read()  # ready

    def _read(self) -> dict:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"the llama.cpp side exited ({self.proc.wait()})")
        return json.loads(line)

    def ask(self, what: str) -> float:
        self.proc.stdin.write(what + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self._read()["tps"]

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait()


PAIRED_RATIOS = (  # (name, numerator, denominator)
    ("mimo_compiled_decode_b1_vs_llamacpp", "mimo_compiled_decode_b1_tps", "llamacpp_decode_b1_tps_f32"),
    ("mimo_compiled_decode_b1_vs_transformers", "mimo_compiled_decode_b1_tps", "transformers_decode_b1_tps"),
    ("mimo_prefill_vs_transformers", "mimo_prefill_tps", "transformers_prefill_tps"),
    ("mimo_prefill_vs_llamacpp", "mimo_prefill_tps", "llamacpp_prefill_tps_f32"),
    ("mimo_compiled_decode_b8_vs_b1", "mimo_compiled_decode_b8_tps", "mimo_compiled_decode_b1_tps"),
    ("mimo_decode_b8_vs_b1", "mimo_decode_b8_tps", "mimo_decode_b1_tps"),
)


def paired(path: str, args: argparse.Namespace) -> dict:
    """``--pairs`` sets of back-to-back measurements, each system loaded once, the order rotating
    from set to set: batch-1 decode (mimo compiled, transformers, llama.cpp F32), prefill, and
    mimo's batch-8 and batch-1 decode, eager and compiled (for batch 8 over batch 1). A set
    sees one machine, where this shared machine's speed drifts by more than the differences
    measured between rounds minutes apart; the ratios are taken within each set."""
    model = MiMoForCausalLM.from_pretrained(path)
    prepare_for_inference(model)
    measures = {"mimo_prefill_tps": lambda: measure_prefill(model, args.prefill_tokens, repeats=1)}
    for compile in (True, False):
        for b in (1, 8):
            eng = Engine(model, max_num_seqs=b, compile=compile)
            prompts = prompts_for(model, b, args.prompt_len)
            measures[f"mimo{'_compiled' if compile else ''}_decode_b{b}_tps"] = (
                lambda eng=eng, prompts=prompts: decode_run(eng, prompts, args.new_tokens).tokens_per_s)
    if not args.no_transformers:
        ref = transformers_model(path)
        measures["transformers_decode_b1_tps"] = lambda: transformers_decode_rate(ref, 1, args.new_tokens,
                                                                                  args.prompt_len)
        measures["transformers_prefill_tps"] = lambda: transformers_prefill_rate(ref, args.prefill_tokens, 1)
    llama = LlamaServer(path, args) if args.llama_python else None
    if llama:
        measures["llamacpp_decode_b1_tps_f32"] = lambda: llama.ask("decode")
        measures["llamacpp_prefill_tps_f32"] = lambda: llama.ask("prefill")
    for fn in measures.values():  # compile, warm up
        fn()
    names = list(measures)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.pairs):
        for n in names[i % len(names):] + names[: i % len(names)]:
            samples[n].append(measures[n]())
    if llama:
        llama.close()
    out: dict = {"sets": args.pairs, "samples": samples}
    for name, ours, theirs in PAIRED_RATIOS:
        if theirs in samples:
            ratios = [a / b for a, b in zip(samples[ours], samples[theirs])]
            out[f"ratio_{name}"] = {
                "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "all": ratios}
    return out


def mimo_side(path: str, dtype: torch.dtype, args: argparse.Namespace) -> dict:
    model = MiMoForCausalLM.from_pretrained(path, dtype=dtype)
    prepare_for_inference(model)
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
        ref = transformers_model(path)
        res["transformers_prefill_tps"] = transformers_prefill_rate(ref, args.prefill_tokens)
        for b in (1, 8):
            res[f"transformers_decode_b{b}_tps"] = transformers_decode_rate(ref, b, args.new_tokens, args.prompt_len)
        del ref
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
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved measurement rounds; the best of each is kept (0: only --pairs)")
    ap.add_argument("--pairs", type=int, default=0,
                    help="then this many sets of back-to-back measurements (batch-1 decode, prefill) of each "
                         "system, and of mimo's batch-8 decode; reports the median of the ratios taken "
                         "within a set")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if bool(args.llama_python) != bool(args.llama_converter):
        ap.error("--llama-python and --llama-converter go together")
    runtime.configure(threads=args.threads)
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
        if not args.rounds:  # --rounds 0: the paired decodes only
            samples["read_bandwidth_bytes_per_s"] = [read_bandwidth()]
        res.update({k: max(v) for k, v in samples.items()})
        res["samples"] = samples
        if args.pairs:
            print(f"{args.pairs} sets of paired measurements", file=sys.stderr, flush=True)
            res["paired"] = paired(path, args)
        cfg = MiMoForCausalLM.from_pretrained(path).config
    pc = parameter_counts(cfg)
    bytes_per_token = (pc.active - pc.embedding) * 4 + cfg.hidden_size * 4  # one embedding row is read, not the table
    bw = res["read_bandwidth_bytes_per_s"]
    res["copy_bandwidth_bytes_per_s"] = copy_bandwidth()
    res["matvec_bandwidth_bytes_per_s"] = matvec_bandwidth()
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
    for k, v in res.get("paired", {}).items():
        if k.startswith("ratio_"):
            res[f"paired_{k}_median"] = v["median"]
    for k, v in res.items():
        if k not in ("samples", "paired"):
            print(f"{k:>48}: {v:.3g}" if isinstance(v, float) else f"{k:>48}: {v}")
    write_json(args.json_out, res)


if __name__ == "__main__":
    main()
