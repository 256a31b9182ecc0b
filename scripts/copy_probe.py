"""Can a model copy a name it has never seen from earlier in its context? (issue #15's bottleneck)

A tool call copies a function name from the tool list and values from the request; a model that cannot copy a
made-up identifier from a few lines up cannot learn that in SFT. For each distance (tokens of filler code from
``json/decoder.py`` between the definition and the use), every made-up function is defined, the filler follows,
then ``result = <first word>_`` is given and the model's greedy continuation must finish the name. Prints the
fraction right per distance; ``--json-out`` writes it.

``--reverse`` probes the other direction, the one a tool call needs (a tool's ``<name>`` comes before the
``<description>`` a request repeats): a registry of the made-up names, each with a one-line description, the
filler, then a comment quoting one description and ``handler = REGISTRY_FUNCS['``
(the shape of the reverse lookups in mimo's synthetic pre-training files); the model must give the name
that *precedes* the quoted text. Scored by the log-likelihood of the line that names each registered one (a choice among the
names, as the server's tool grammar lets a model choose; chance is 1 in the registry's size) and by greedy
decoding.

``--lookups N`` asks what mimo's synthetic pre-training files ask (``mimo train --synthetic-files``,
:mod:`mimo.training.synthetic`): N seeded sections of each lookup kind, forward (a table's key, then copy the value
that follows it) and reverse (a registry's description, then copy the name that precedes it), every query scored
by likelihood among the answers its section offers, against chance.

    .venv/bin/python scripts/copy_probe.py --model models/mimo-nano
    .venv/bin/python scripts/copy_probe.py --model models/mimo-nano-chat-base --reverse
    .venv/bin/python scripts/copy_probe.py --model models/mimo-nano-chat-base --lookups 12
    .venv/bin/python scripts/copy_probe.py --model RUN/checkpoints/step-N/model --tokenizer RUN/tokenizer
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NAMES = ["compute_zarblek_total", "fetch_quorvian_index", "merge_plinth_records", "parse_vexo_config",
         "load_grimble_state", "scan_wubbet_items", "build_trellox_map", "check_snorvel_limit",
         "write_dabbit_log", "sort_klemmet_rows", "open_frindle_port", "count_zoggle_hits"]
DISTANCES = (0, 20, 60, 120, 250, 400)
ABOUT = ["Add up the ledger rows of one quarter", "Return the index of the widest column", "Merge two sorted record lists",
         "Read the settings block of a vexo file", "Restore the saved session state", "Count the items flagged for review",
         "Build the map of station names", "Check that the rate stays under its limit", "Append one line to the audit log",
         "Sort the rows by their second field", "Open the port the device listens on", "Tally the hits of each query"]
REGISTRY = 6  # names per registry: chance is 1 in 6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (with its tokenizer, unless --tokenizer)")
    ap.add_argument("--tokenizer", help="tokenizer directory (a training checkpoint's model has none: the run's)")
    ap.add_argument("--distances", default=",".join(map(str, DISTANCES)),
                    help="tokens of filler between the definitions and the question, comma-separated (default %(default)s)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--reverse", action="store_true",
                      help="find the name that precedes a quoted description (a tool list's shape) instead")
    mode.add_argument("--lookups", type=int, metavar="N",
                      help="score N sections of each of the synthetic pre-training data's lookup kinds instead")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if args.lookups is not None and args.lookups < 1:
        ap.error("--lookups must be >= 1")
    try:
        args.distances = [int(d) for d in args.distances.split(",")]
    except ValueError:
        ap.error(f"--distances takes comma-separated integers, got {args.distances!r}")
    if any(d < 0 for d in args.distances):
        ap.error("--distances must be >= 0")
    from mimo import LLM, SamplingParams
    from mimo.tokenizer import Tokenizer

    llm = LLM(args.model, tokenizer=Tokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None)
    tok = llm.tokenizer
    if args.lookups:
        return lookups_probe(args, llm)
    with open(os.path.join(os.path.dirname(json.__file__), "decoder.py"), encoding="utf-8") as f:
        filler = tok.encode(f.read())
    if args.reverse:
        return reverse_probe(args, llm, filler)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    result: dict[str, float] = {}
    for n in args.distances:
        prompts, starts = [], []
        for name in NAMES:
            start = name.split("_")[0] + "_"
            text = f"def {name}(items):\n    return sorted(items)\n\n" + tok.decode(filler[:n]) + f"\n\nresult = {start}"
            prompts.append(tok.encode(text))
            starts.append(start)
        outs = llm.generate(prompts, params)
        right = sum((s + o.outputs[0].text).startswith(name) for s, o, name in zip(starts, outs, NAMES))
        result[str(n)] = right / len(NAMES)
        print(f"distance {n:4d} tokens: {right}/{len(NAMES)} names copied", flush=True)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "copied_by_distance": result}, f, indent=2)
    return 0


def choose_by_likelihood(model, head: list[int], options: list[list[int]]) -> int:
    """The option whose tokens after ``head`` are likeliest (their log-probabilities summed), in one forward."""
    import torch

    from mimo.posttrain.mopd import token_log_probs

    rows = [head + o for o in options]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])  # right padding: causal, harmless
    with torch.no_grad():
        lp = token_log_probs(model(ids).logits[:, :-1], ids[:, 1:])  # [k, t]: log p(ids[k, t + 1])
    score = [lp[k, len(head) - 1 : len(r) - 1].sum().item() for k, r in enumerate(rows)]
    return max(range(len(rows)), key=score.__getitem__)


def lookups_probe(args, llm) -> int:
    """Every query of ``args.lookups`` seeded sections per kind, answered by likelihood among its section's
    answers."""
    import random

    from mimo.training.synthetic import lookup_section, reverse_lookup_section

    tok, model = llm.tokenizer, llm.model
    result = {}
    for kind, make in (("forward", lookup_section), ("reverse", reverse_lookup_section)):
        rng = random.Random(1234)
        right = asked = 0
        chance = 0.0
        for _ in range(args.lookups):
            text, queries = make(rng)
            for offset, answer, choices in queries:
                # whole lines, so that no option is tokenized across an unnatural cut (``== 'x'`` or ``['x``)
                start, end = text.rfind("\n", 0, offset) + 1, text.index("\n", offset) + 1
                before, after = text[start:offset], text[offset + len(answer):end]
                pick = choose_by_likelihood(model, tok.encode(text[:start]), [tok.encode(before + c + after) for c in choices])
                right += choices[pick] == answer
                asked += 1
                chance += 1 / len(choices)
        result[kind] = {"queries": asked, "right": right, "chance": chance}
        print(f"{kind} lookups: {right}/{asked} right by likelihood among each section's answers (chance {chance:.1f})",
              flush=True)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "lookups": result}, f, indent=2)
    return 0


def reverse_probe(args, llm, filler: list[int]) -> int:
    """For each distance and each of the registries (names taken REGISTRY at a time, each name asked once), the
    name picked by whole-name log-likelihood among the registry's, and by greedy decoding."""
    from mimo import SamplingParams

    tok, model = llm.tokenizer, llm.model
    registries = [list(range(i, i + REGISTRY)) for i in range(0, len(NAMES), REGISTRY)]
    greedy_params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    result: dict[str, dict[str, float]] = {}
    for n in args.distances:
        right_choice = right_greedy = asked = 0
        prompts, wanted = [], []
        for reg in registries:
            table = "REGISTRY = [\n" + "".join(f"    ({NAMES[i]!r}, {ABOUT[i]!r}),\n" for i in reg) + "]\n\n"
            lines = [tok.encode(f"handler = REGISTRY_FUNCS[{NAMES[j]!r}]\n") for j in reg]  # whole lines: see above
            for i in reg:
                text = table + tok.decode(filler[:n]) + f"\n\n# {ABOUT[i]}:\n"
                right_choice += reg[choose_by_likelihood(model, tok.encode(text), lines)] == i
                prompts.append(tok.encode(text + "handler = REGISTRY_FUNCS['"))
                wanted.append(NAMES[i])
                asked += 1
        outs = llm.generate(prompts, greedy_params)
        right_greedy = sum(o.outputs[0].text.startswith(w) for o, w in zip(outs, wanted))
        result[str(n)] = {"choice": right_choice / asked, "greedy": right_greedy / asked}
        print(f"distance {n:4d} tokens: the name before the quoted description {right_choice}/{asked} by likelihood "
              f"among {REGISTRY} (chance {asked / REGISTRY:.0f}), {right_greedy}/{asked} greedy", flush=True)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "reverse": True, "registry": REGISTRY, "right_by_distance": result}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
