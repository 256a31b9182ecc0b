"""The llama.cpp half of ``compare_peers.py``: runs in a separate interpreter that has
llama-cpp-python (and the converter's needs: torch, transformers 4.x, gguf), never imports mimo.

1. Converts a hub-layout checkpoint with llama.cpp's own ``convert_hf_to_gguf.py`` (from the
   llama-cpp-python source distribution, ``vendor/llama.cpp``). The benchmark checkpoint's
   tokenizer is a freshly trained BPE whose pre-tokenizer hash llama.cpp cannot know, so the
   converter is told it is Qwen2's (MiMo's own tokenizer is Qwen2-style); the benchmark feeds
   token ids, so tokenization never runs.
2. Times prefill (``Llama.eval`` over the prompt) and batch-1 greedy decode (``Llama.generate``
   with temperature 0), and prints one JSON object; or, with ``--serve``, keeps the model loaded
   and times one decode or prefill per line on stdin (``compare_peers.py --pairs``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# transformers-5 spellings that mimo writes beside the hub's; the converter would read
# ``rope_parameters`` instead of the hub's partial_rotary_factor and fail, so it gets hub keys only.
NATIVE_ONLY = ("layer_types", "mlp_layer_types", "rms_norm_eps", "rope_parameters")


def hub_view(model_dir: str, view: str) -> str:
    """``view``: the checkpoint's files linked, with config.json reduced to the hub's spelling."""
    os.makedirs(view, exist_ok=True)
    for name in os.listdir(model_dir):
        skip = name == "config.json" or name.endswith((".gguf", ".hub"))
        if not skip and not os.path.exists(os.path.join(view, name)):
            os.symlink(os.path.abspath(os.path.join(model_dir, name)), os.path.join(view, name))
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(view, "config.json"), "w") as f:
        json.dump({k: v for k, v in cfg.items() if k not in NATIVE_ONLY}, f, indent=2)
    return view


def convert(converter: str, model_dir: str, out: str, outtype: str) -> None:
    model_dir = hub_view(model_dir, out + ".hub")
    boot = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {os.path.dirname(converter)!r})\n"
        "import conversion.base as base\n"
        "base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'qwen2'\n"
        f"sys.argv = ['convert_hf_to_gguf.py', {model_dir!r}, '--outfile', {out!r}, '--outtype', {outtype!r},"
        " '--no-mtp']\n"
        f"runpy.run_path({converter!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", boot], check=True, env=env, stdout=subprocess.DEVNULL)


def load(gguf: str, args: argparse.Namespace):
    from llama_cpp import Llama

    return Llama(gguf, n_ctx=max(args.prefill_tokens, args.prompt_len + args.new_tokens) + 16, n_batch=512,
                 n_ubatch=512, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)


def prompt_ids(llm, length: int) -> list[int]:
    import random

    rng = random.Random(0)
    vocab = llm.n_vocab()
    return [rng.randrange(2, vocab) for _ in range(length)]


def decode_rate(llm, prompt: list[int], new_tokens: int) -> float:
    """Batch-1 greedy tokens/s, timed from the first generated token (which comes from prefill)."""
    llm.reset()
    n, t0 = 0, 0.0
    for _tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        n += 1
        if n == 1:
            t0 = time.perf_counter()
        if n == new_tokens:
            break
    return (n - 1) / (time.perf_counter() - t0)


def prefill_rate(llm, prompt: list[int]) -> float:
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    return len(prompt) / (time.perf_counter() - t)


def serve(llm, args: argparse.Namespace) -> None:
    """Paired mode: one measurement per line on stdin (``decode`` or ``prefill``), one JSON line back."""
    long_prompt = prompt_ids(llm, args.prefill_tokens)
    prompt = long_prompt[: args.prompt_len]
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        what = line.strip()
        if what == "decode":
            print(json.dumps({"tps": decode_rate(llm, prompt, args.new_tokens)}), flush=True)
        elif what == "prefill":
            print(json.dumps({"tps": prefill_rate(llm, long_prompt)}), flush=True)
        else:
            print(json.dumps({"error": f"unknown request {what!r}"}), flush=True)


def bytes_per_token(gguf: str) -> int:
    """Bytes a batch-1 decode step reads from this GGUF: every tensor once, except the token embedding (one
    row) and the routed experts (``*_exps``: top-k of them)."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf)
    kv = {f.name: f for f in reader.fields.values()}

    def field(suffix: str) -> int | None:
        for name, f in kv.items():
            if name.endswith(suffix):
                return int(f.parts[f.data[0]][0])
        return None

    n_exp, k = field(".expert_count"), field(".expert_used_count")
    total = 0
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            total += int(t.n_bytes) // int(t.shape[-1] if len(t.shape) > 1 else 1)  # one row of the table
        elif "_exps" in t.name and n_exp and k:
            total += int(t.n_bytes) * k // n_exp
        else:
            total += int(t.n_bytes)
    return total


def measure(gguf: str, args: argparse.Namespace) -> dict:
    llm = load(gguf, args)
    long_prompt = prompt_ids(llm, args.prefill_tokens)
    prefill = max(prefill_rate(llm, long_prompt) for _ in range(3))
    prompt = long_prompt[: args.prompt_len]
    rates = [decode_rate(llm, prompt, args.new_tokens) for _ in range(2)]
    return {"llamacpp_prefill_tps": prefill, "llamacpp_decode_b1_tps": max(rates)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--converter", required=True)
    ap.add_argument("--outtype", default="f32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--serve", action="store_true",
                    help="paired mode: one measurement per 'decode' or 'prefill' line on stdin")
    args = ap.parse_args()
    gguf = os.path.join(args.model_dir, f"model-{args.outtype}.gguf")
    if not os.path.exists(gguf):  # converted once per checkpoint, measured every round
        convert(args.converter, args.model_dir, gguf, args.outtype)
    if args.serve:
        print(json.dumps({"bytes_per_token": bytes_per_token(gguf), "gguf_bytes": os.path.getsize(gguf)}),
              flush=True)
        serve(load(gguf, args), args)
        return
    res = measure(gguf, args)
    import llama_cpp

    res["llamacpp_version"] = llama_cpp.__version__
    res["llamacpp_gguf_bytes"] = os.path.getsize(gguf)
    res["llamacpp_bytes_per_token"] = bytes_per_token(gguf)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
