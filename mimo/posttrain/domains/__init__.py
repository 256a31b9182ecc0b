"""The verifiable domains of post-training, generated here (no downloads), split by family, written once.

Three domains, each a module with ``FAMILIES``, ``HELDOUT``, ``generate(family, index, rng)`` and a
metric ``score(example, answer)``:

* ``tools`` (:mod:`.tools`): tool schemas from real standard-library functions (families = modules) and,
  for training only, synthetic APIs (:mod:`.synthetic_tools`, families = API domains) so that the model
  learns to copy names and values rather than memorise tools; metric: exact-call accuracy, on OpenAI
  ``tool_calls`` parsed from the answer.
* ``arithmetic`` (:mod:`.arithmetic`): multi-digit word problems with a worked ``<think>`` scratchpad
  (families = problem templates); metric: exact answer on the ``Answer: N`` line.
* ``code`` (:mod:`.code`): function-writing tasks with unit tests (families = task generators); metric:
  pass@1 in the sandbox.

Splits are by family: a held-out family contributes no example to ``train``, so held-out scores measure
transfer to schemas, problem shapes and task kinds never trained on. The held-out families are fixed
lists (not drawn from the seed) so runs with different seeds are scored on the same families. Within a
split, example ``i`` belongs to family ``i mod #families`` (balanced), and each (split, family) pair has its
own random stream (:func:`.common.stream`), so the files are a function of ``(seed, counts)`` and of the
Python version (the tool schemas read the standard library's signatures and docstrings; the manifest
records the version).

:func:`write_domains` writes ``DIR/<domain>/<split>.jsonl`` and ``DIR/manifest.json`` (counts, seed,
families per split, Python version); :func:`load` reads a split back.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mimo.chat_format.parsers import extract
from mimo.posttrain.domains import arithmetic, code, tools
from mimo.posttrain.domains.common import prompt_messages, stream

__all__ = ["DOMAINS", "SPLITS", "families", "generate_split", "load", "prompt_messages", "render_prompt", "score",
           "score_text", "write_domains"]

DOMAINS = {"tools": tools, "arithmetic": arithmetic, "code": code}
SPLITS = ("train", "heldout")
DEFAULT_COUNTS = {"train": 1200, "heldout": 300}
# 2: the tools domain's training split gained synthetic APIs, more modules, varied requests and tool lists;
# 3: a third of synthetic tools carry a made-up word in their name, and every held-out tool is asked for.
FORMAT_VERSION = 3


def families(domain: str, split: str) -> list[str]:
    """The families of one split of one domain, in a fixed order."""
    mod = DOMAINS[domain]
    held = set(mod.HELDOUT)
    return [f for f in mod.FAMILIES if (f in held) == (split == "heldout")]


def generate_split(domain: str, split: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` examples of one split, deterministic in ``(domain, split, n, seed)``."""
    mod = DOMAINS[domain]
    fams = families(domain, split)
    rngs = {f: stream(seed, domain, split, f) for f in fams}
    out: list[dict[str, Any]] = []
    i = 0
    while len(out) < n:
        fam = fams[i % len(fams)]
        ex = mod.generate(fam, i, rngs[fam])
        i += 1
        if ex is None:  # a tool for which no valid call was found this time
            continue
        out.append({"id": f"{domain}-{split}-{len(out):05d}", "domain": domain, "family": fam, "split": split, **ex})
    return out


def write_domains(out_dir: str | os.PathLike[str], seed: int = 0,
                  counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Write every domain's splits as JSONL under ``out_dir`` and a ``manifest.json``; returns the manifest.

    ``counts`` is examples per split (``{"train": 1200, "heldout": 300}`` by default), the same for every
    domain."""
    counts = {**DEFAULT_COUNTS, **(counts or {})}
    out = Path(out_dir)
    manifest: dict[str, Any] = {"format_version": FORMAT_VERSION, "seed": seed, "python": platform.python_version(),
                                "domains": {}}
    for domain in DOMAINS:
        (out / domain).mkdir(parents=True, exist_ok=True)
        info: dict[str, Any] = {}
        for split in SPLITS:
            examples = generate_split(domain, split, counts[split], seed)
            path = out / domain / f"{split}.jsonl"
            with open(path, "w", encoding="utf-8") as f:
                for ex in examples:
                    f.write(json.dumps(ex, ensure_ascii=False) + "\n")
            per_family: dict[str, int] = {}
            for ex in examples:
                per_family[ex["family"]] = per_family.get(ex["family"], 0) + 1
            info[split] = {"file": f"{domain}/{split}.jsonl", "count": len(examples), "families": families(domain, split),
                           "per_family": per_family}
        manifest["domains"][domain] = info
    with open(out / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest


def load(data_dir: str | os.PathLike[str], domain: str, split: str) -> list[dict[str, Any]]:
    """The examples of one written split."""
    with open(Path(data_dir) / domain / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def render_prompt(tokenizer: Any, example: Mapping[str, Any]) -> str:
    """The example's conversation before its first assistant turn, rendered by ``tokenizer``'s chat template with
    the example's tools and template settings: what a model is asked (by ``mimo mopd``'s rollouts and by the
    evaluation scripts alike)."""
    return tokenizer.apply_chat_template(prompt_messages(dict(example)), tools=example.get("tools"),
                                         add_generation_prompt=True, **example.get("chat_template_kwargs", {}))


def score_text(example: Mapping[str, Any], text: str, **kwargs: Any) -> float:
    """The domain's metric on one generated turn (special tokens kept): a tool call is first parsed from the
    release's XML format (the server's parser), the other domains score the text. ``kwargs`` go to the code
    domain's sandbox."""
    if example["domain"] == "tools":
        thinking = bool(example.get("chat_template_kwargs", {}).get("enable_thinking"))
        return tools.score(example, extract(text, example.get("tools"), starts_in_reasoning=thinking).tool_calls)
    return score(example, text, **(kwargs if example["domain"] == "code" else {}))


def score(example: Mapping[str, Any], answer: Any, **kwargs: Any) -> float:
    """The example's domain metric on one answer (see each domain module for what ``answer`` is)."""
    return DOMAINS[example["domain"]].score(example, answer, **kwargs)
