"""Does a chat model pick the right tool on held-out requests, and is the choice better than chance? (issue #15)

An exact tool call needs the right tool first. For each tools example of a ``mimo domains`` split, the model is
given the rendered prompt and ``<tool_call>\\n<function=`` and must choose among the offered names two ways:
token by token among the names still possible (what the server's tool grammar lets greedy decoding do), and by
each whole name's log-likelihood (``<function=NAME>``, summed over its tokens). A choice is right when it is a tool
that answers the request (``mimo.posttrain.domains.tools.answers``: the reference, or an offered tool the request
cannot tell apart from it). Prints both counts beside chance (the mean share of offered tools that answer) and
the count of examples whose first listed tool answers; ``--json-out`` writes them.

    .venv/bin/python scripts/tool_choice_probe.py --model models/mimo-nano-chat-sft --data DATA --limit 50
    .venv/bin/python scripts/tool_choice_probe.py --model RUN/checkpoints/step-00000200/model \\
        --tokenizer models/mimo-nano-chat-sft --data DATA
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a chat model directory (with its tokenizer)")
    ap.add_argument("--data", required=True, help="the directory `mimo domains` wrote")
    ap.add_argument("--tokenizer", help="where the tokenizer is, if not with the model (a training checkpoint has "
                    "none: give the model it was trained from)")
    ap.add_argument("--split", default="heldout", choices=("train", "heldout"))
    ap.add_argument("--limit", type=int, default=50, help="the first N tools examples of the split (default 50)")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    import torch
    from tqdm import tqdm

    from mimo.checkpoint import MiMoForCausalLM
    from mimo.posttrain.domains import load, render_prompt
    from mimo.posttrain.domains.tools import answers
    from mimo.tokenizer import Tokenizer

    try:
        examples = load(args.data, "tools", args.split)[: args.limit]
    except FileNotFoundError as e:
        ap.error(f"{e.filename} not found: write the data with `mimo domains --out {args.data}`")
    tok = Tokenizer.from_pretrained(args.tokenizer or args.model)
    model = MiMoForCausalLM.from_pretrained(args.model, dtype="float32").eval()

    def log_probs(rows: list[list[int]]) -> list[torch.Tensor]:
        """Every row's log-probabilities in one forward: the rows are right-padded, which causal attention
        leaves the real positions' logits unchanged by."""
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        with torch.no_grad():
            return list(torch.log_softmax(model(ids).logits.float(), dim=-1).unbind(0))

    greedy = whole = first = 0
    chance = 0.0
    for ex in tqdm(examples, desc="examples", unit="ex"):
        prompt = render_prompt(tok, ex) + "<tool_call>\n<function="
        head = tok.encode(prompt)
        names = [t["function"]["name"] for t in ex["tools"]]
        want = answers(ex)  # the reference and any offered tool the request cannot tell apart from it
        # each name's tokens as they follow the prompt (a merge across the boundary falls back to the name alone)
        conts = {}
        for n in names:
            ids = tok.encode(prompt + n + ">")
            conts[n] = ids[len(head):] if ids[: len(head)] == head else tok.encode(n + ">")
        lp = dict(zip(names, log_probs([head + conts[n] for n in names])))
        score = {n: sum(lp[n][len(head) - 1 + i, t].item() for i, t in enumerate(c)) for n, c in conts.items()}
        whole += max(names, key=lambda n: score[n]) in want
        # greedy among the names still possible; the row of log-probs after a prefix is the same in every name's
        # pass that shares it
        alive, pos = list(names), 0
        while len(alive) > 1:
            row = lp[alive[0]][len(head) - 1 + pos]
            options = {conts[n][pos] for n in alive if pos < len(conts[n])}
            if not options:  # names offered twice: the same tokens to the end, one choice
                break
            pick = max(options, key=lambda t: row[t].item())
            alive = [n for n in alive if pos < len(conts[n]) and conts[n][pos] == pick]
            pos += 1
        greedy += alive[0] in want
        first += names[0] in want
        chance += len(want) / len(names)
    out = {"model": args.model, "split": args.split, "examples": len(examples), "right_greedy_among_names": greedy,
           "right_whole_name_likelihood": whole, "chance": chance, "listed_first": first}
    print(f"{len(examples)} {args.split} tools examples: the right tool {greedy} (greedy among the offered names), "
          f"{whole} (whole-name likelihood); chance {chance:.1f}, the first listed {first}")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
