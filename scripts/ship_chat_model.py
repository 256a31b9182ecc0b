"""Ship the post-trained chat model (issue #15): copy it into ``models/mimo-nano-chat`` (what ``mimo serve``
serves by default) with its sampling defaults and a model card assembled from what the post-training measured.

Every figure in the card comes from a file the run wrote, never typed in: the report's Table-7-style table and
Fig.-6-style plot (``scripts/posttrain_report.py``), the tool calls scored through ``mimo serve`` and the openai
client (``scripts/eval_tools_openai.py --json-out``), the wall time of each stage (``stage_seconds.json`` of
``scripts/posttrain.sh``), the domains' data manifest and, where given, the base corpus's manifest.

    .venv/bin/python scripts/ship_chat_model.py --model runs/post/mopd/final --run runs/post \\
        --tools-eval runs/post/eval/openai-tools.json --corpus-manifest corpus/MANIFEST.json \\
        [--tools-eval-unconstrained runs/post/eval/openai-tools-unconstrained.json] --out models/mimo-nano-chat [--force]

Sampling defaults (``generation_config.json``): the release's model card recommends top_p 0.95 with temperature
0.8 for general use and 0.3 for tool use. This model's strength is tool calls, so it ships 0.3 (a request's own
``temperature`` overrides it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

MAX_FILE_BYTES = 60 * 2**20  # the bound on each shipped file
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
SAMPLING = {"do_sample": True, "temperature": 0.3, "top_p": 0.95}
STAGES = {  # stage_seconds.json's names, in the order they run, and what each did
    "data": "the verifiable domains' data (`mimo domains`)",
    "sft": "general SFT of the base on the three domains: the student (`mimo sft`)",
    "teacher-tools": "tool-calling teacher: the student fine-tuned on tool calls alone",
    "teacher-arithmetic": "arithmetic teacher",
    "teacher-code": "code teacher",
    "mopd": "MOPD from the student with the three teachers (`mimo mopd`): the shipped model",
    "orm-only": "Fig. 6 baseline: outcome reward only (`--kl-weight 0`)",
    "mopd-no-orm": "Fig. 6 baseline: distillation only (`--alpha 0`)",
}


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"ship_chat_model: {what} not found: {path}") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"ship_chat_model: {what} is not valid JSON ({path}): {e}") from None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _what(stage: str) -> str:
    if stage in STAGES:
        return STAGES[stage]
    if stage == "eval-openai-tools":
        return "held-out tool calls through `mimo serve` and the openai client"
    if stage == "eval-openai-tools-unconstrained":
        return "the same, `mimo serve --no-constrained-decoding` (the model alone)"
    if stage.startswith("eval-") and stage.endswith("-tool-grammar"):
        return (f"held-out tool calls of the {stage[5:-len('-tool-grammar')]} model under the server's tool-call grammar "
                "(`scripts/eval_domains.py --tool-grammar`)")
    if stage.startswith("eval-"):
        return f"held-out evaluation of the {stage[5:]} model (`scripts/eval_domains.py`)"
    return ""


def stage_table(times: dict[str, float]) -> str:
    """One row per stage in the order they ran (stage_seconds.json is written in that order)."""
    lines = ["| stage | what | wall time |", "|---|---|---|"]
    lines += [f"| {n} | {_what(n)} | {_minutes(t)} |" for n, t in times.items()]
    lines.append(f"| all | | {_minutes(sum(times.values()))} |")
    return "\n".join(lines)


def data_section(manifest: dict) -> str:
    lines = [f"Written by `mimo domains` (seed {manifest.get('seed')}, Python {manifest.get('python')}); "
             "train and held-out splits are disjoint by family:", "",
             "| domain | train | held out | held-out families |", "|---|---|---|---|"]
    for d, splits in manifest.get("domains", {}).items():
        tr, ho = splits.get("train", {}), splits.get("heldout", {})
        lines.append(f"| {d} | {tr.get('count', 0)} ({len(tr.get('families', []))} families) | {ho.get('count', 0)} | "
                     f"{', '.join(ho.get('families', []))} |")
    return "\n".join(lines)


def tools_section(tools_eval: dict, unconstrained: dict | None) -> str:
    acc = tools_eval["exact_call_accuracy"]
    fam = ", ".join(f"{f} {v:.2f}" for f, v in tools_eval.get("per_family", {}).items())
    how = ("with the server's tool-call grammar (`mimo serve`'s default: names and argument types held to the "
           "offered schemas; which tool and which values stay the model's)"
           if tools_eval.get("constrained_decoding", False) else "without constrained decoding")
    text = (f"`python scripts/eval_tools_openai.py --model models/mimo-nano-chat --data DATA --json-out F`: `mimo "
            f"serve` and the official `openai` client, held-out tool schemas (families never trained on), temperature "
            f"{tools_eval.get('temperature')}, {how}: **exact-call accuracy {acc:.1%}** over "
            f"{tools_eval.get('examples')} requests (the right function, arguments that validate against its schema "
            f"and carry the request's values); per family: {fam}.")
    if unconstrained is not None:
        text += (f" The model alone (`--no-constrained-decoding`): {unconstrained['exact_call_accuracy']:.1%} over "
                 f"{unconstrained.get('examples')} requests.")
    return text


def card(times: dict, manifest: dict, tools_eval: dict, table_md: str, corpus: dict | None, config: dict,
         unconstrained: dict | None = None) -> str:
    base = (f"pre-trained by `mimo train` on a corpus whose manifest fingerprint is `{corpus.get('fingerprint')}` "
            f"({corpus.get('files')} files; rebuilt exactly by `python scripts/build_corpus.py --out DIR`)"
            if corpus else "pre-trained by `mimo train` (corpus manifest not given)")
    return f"""---
license: apache-2.0
library_name: mimo
tags: [mimo-v2-flash, moe, mtp, chat, tool-calling]
---

# mimo-nano-chat

What `mimo serve` answers chat requests with when no `--model` is given: mimo-nano's architecture
({config.get('num_hidden_layers')} layers, hidden {config.get('hidden_size')}, {config.get('n_routed_experts')} routed
experts, three MTP blocks), {base}, then post-trained by mimo's own SFT and MOPD (multi-teacher on-policy
distillation, the paper's Eq. 7-9) on three verifiable domains: tool calls in the release's XML format,
arithmetic answered after a `<think>` scratchpad, and small Python functions checked by unit tests in a sandbox.
It is a toy, trained for these three domains and little else.

## Tool calls through the server

{tools_section(tools_eval, unconstrained)}

## Post-training (Table 7 and Fig. 6 at nano scale)

Held-out metric per domain, `scripts/eval_domains.py` (greedy):

{table_md.strip()}

![reward against step for MOPD and the two baselines](posttrain.png)

## Stages and wall time

On this machine (2 CPU cores), `BASE=... OUT=... bash scripts/posttrain.sh` (every stage resumable; the
sequence is the one command to rerun):

{stage_table(times)}

## Data

{data_section(manifest)}

## Sampling defaults

`generation_config.json`: temperature {SAMPLING['temperature']}, top_p {SAMPLING['top_p']} -- the release's
recommendation for tool use (0.8 for general chat; a request's own settings override these).

## Limits

Trained on three narrow domains with synthetic data: outside them it writes Python-shaped text. Tool calls
are scored on tools of the families above with short argument lists; long conversations, several tools per
turn and free-form answers were not trained. Code it writes is untrusted: run it only in a sandbox
(`mimo.posttrain.sandbox`).
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the post-trained model (hub layout with tokenizer)")
    ap.add_argument("--run", required=True, help="the posttrain.sh output directory (stage_seconds.json, data/, "
                    "report/)")
    ap.add_argument("--tools-eval", required=True, help="scripts/eval_tools_openai.py --json-out of this model")
    ap.add_argument("--tools-eval-unconstrained", help="the same evaluation with --no-constrained-decoding (the "
                    "model alone), reported beside it")
    ap.add_argument("--report", help="the report's path prefix (default RUN/report, where posttrain.sh writes "
                    "RUN/report.md, .json and .png)")
    ap.add_argument("--min-accuracy", type=float, default=0.8, help="refuse to ship below this held-out exact-call "
                    "accuracy through the server (default 0.8, the issue's bar)")
    ap.add_argument("--corpus-manifest", help="the base corpus's MANIFEST.json (scripts/build_corpus.py --out DIR "
                    "writes DIR/MANIFEST.json)")
    ap.add_argument("--out", default="models/mimo-nano-chat")
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    args = ap.parse_args()

    for name in MODEL_FILES:
        path = os.path.join(args.model, name)
        if not os.path.isfile(path):
            raise SystemExit(f"ship_chat_model: {args.model} has no {name}: not a model directory with its tokenizer")
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise SystemExit(f"ship_chat_model: {path} is {os.path.getsize(path) / 2**20:.1f} MiB, over the "
                             f"{MAX_FILE_BYTES / 2**20:.0f} MiB a shipped file may have")
    report = args.report or os.path.join(args.run, "report")
    times = _read_json(os.path.join(args.run, "stage_seconds.json"), "stage times")
    manifest = _read_json(os.path.join(args.run, "data", "manifest.json"), "the domains' data manifest")
    tools_eval = _read_json(args.tools_eval, "the openai tool-call evaluation")
    if "exact_call_accuracy" not in tools_eval:
        raise SystemExit(f"ship_chat_model: {args.tools_eval} has no exact_call_accuracy (eval_tools_openai.py "
                         "--json-out writes it)")
    if tools_eval["exact_call_accuracy"] < args.min_accuracy:
        raise SystemExit(f"ship_chat_model: exact-call accuracy {tools_eval['exact_call_accuracy']:.1%} is below "
                         f"--min-accuracy {args.min_accuracy:.0%}: not shipped")
    try:
        with open(report + ".md", encoding="utf-8") as f:
            table_md = f.read()
    except FileNotFoundError:
        raise SystemExit(f"ship_chat_model: no report at {report}.md (scripts/posttrain_report.py --out)") from None
    corpus = _read_json(args.corpus_manifest, "the corpus manifest") if args.corpus_manifest else None
    unconstrained = (_read_json(args.tools_eval_unconstrained, "the unconstrained tool-call evaluation")
                     if args.tools_eval_unconstrained else None)
    config = _read_json(os.path.join(args.model, "config.json"), "config.json")

    if os.path.exists(args.out):
        if not args.force:
            raise SystemExit(f"ship_chat_model: {args.out} exists; --force replaces it")
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    for name in MODEL_FILES:
        shutil.copyfile(os.path.join(args.model, name), os.path.join(args.out, name))
    gen_path = os.path.join(args.model, "generation_config.json")
    gen = _read_json(gen_path, "generation_config.json") if os.path.exists(gen_path) else {}
    gen.update(SAMPLING)
    with open(os.path.join(args.out, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(gen, f, indent=1)
    if os.path.exists(report + ".png"):
        shutil.copyfile(report + ".png", os.path.join(args.out, "posttrain.png"))
    evals = {"tools_openai": tools_eval, "stage_seconds": times}
    if unconstrained is not None:
        evals["tools_openai_unconstrained"] = unconstrained
    if os.path.exists(report + ".json"):
        evals["report"] = _read_json(report + ".json", "the report's JSON")
    with open(os.path.join(args.out, "eval.json"), "w", encoding="utf-8") as f:
        json.dump(evals, f, indent=1)
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(card(times, manifest, tools_eval, table_md, corpus, config, unconstrained))
    print(f"shipped {args.model} -> {args.out} (tool calls {tools_eval['exact_call_accuracy']:.1%} through the server)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
