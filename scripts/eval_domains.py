"""Score a chat model on the held-out splits of the three verifiable domains (issue #15), greedy.

tools: exact-call accuracy (the server's own parser reads the reply); arithmetic: exact answer; code: pass@1
in the sandbox. Prompts are the held-out conversations up to their first assistant turn, rendered by the
model's chat template with the example's tools and template settings.

    .venv/bin/python scripts/eval_domains.py --model DIR --data DIR [--per-domain 50] [--domains tools,...] [--json-out F]
        [--tool-grammar] [--max-tokens N]

``--tool-grammar``: tool calls decoded under the grammar `mimo serve` applies (:mod:`mimo.chat_format.tool_grammar`,
``tool_choice="auto"``: free text until ``<tool_call>``, then one of the offered calls with valid arguments).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mimo import LLM, SamplingParams, StructuredOutputsParams  # noqa: E402
from mimo.chat_format.tool_grammar import tool_call_tag  # noqa: E402
from mimo.posttrain import domains  # noqa: E402

MAX_TOKENS = {"tools": 160, "arithmetic": 320, "code": 200}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="what write_domains wrote (has tools/heldout.jsonl, ...)")
    ap.add_argument("--per-domain", type=int, default=50)
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--domains", default="tools,arithmetic,code", help="comma-separated (default all three)")
    ap.add_argument("--json-out")
    ap.add_argument("--tool-grammar", action="store_true", help="decode tool calls under the server's tool grammar")
    ap.add_argument("--max-tokens", type=int, help="tokens a reply may take in every domain (default: "
                    + ", ".join(f"{d} {n}" for d, n in MAX_TOKENS.items())
                    + "; a reply that reasons before its tool call needs more)")
    args = ap.parse_args()
    if args.max_tokens is not None and args.max_tokens < 1:
        ap.error(f"--max-tokens must be at least 1, got {args.max_tokens}")
    llm = LLM(args.model, max_num_seqs=16)
    tok = llm.tokenizer
    result = {"model": args.model, "split": args.split, "tool_grammar": args.tool_grammar, "domains": {}}
    wanted = [d.strip() for d in args.domains.split(",") if d.strip()]
    unknown = sorted(set(wanted) - set(MAX_TOKENS))
    if unknown or not wanted:
        ap.error(f"--domains: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(MAX_TOKENS)}")
    for domain in wanted:
        examples = domains.load(args.data, domain, args.split)[: args.per_domain]
        prompts = [domains.render_prompt(tok, ex) for ex in examples]
        t = time.perf_counter()
        # special tokens stay in the text (<tool_call> is one); the turn ends at <|im_end|>
        greedy = SamplingParams(temperature=0, max_tokens=args.max_tokens or MAX_TOKENS[domain], skip_special_tokens=False,
                                stop_token_ids=[tok.token_to_id("<|im_end|>")])
        params = [greedy] * len(examples)
        if domain == "tools" and args.tool_grammar:
            params = [dataclasses.replace(greedy, structured_outputs=StructuredOutputsParams(
                structural_tag=tool_call_tag(ex["tools"]))) for ex in examples]
        outs = llm.generate(prompts, params)
        seconds = time.perf_counter() - t
        scores = [domains.score_text(ex, out.outputs[0].text) for ex, out in zip(examples, outs)]
        result["domains"][domain] = {"examples": len(examples), "score": sum(scores) / len(scores),
                                     "seconds": seconds, "sample": outs[0].outputs[0].text[:300]}
        print(f"{domain:<11} {sum(scores):4.0f}/{len(scores)} = {sum(scores) / len(scores):.3f}  ({seconds:.0f} s)",
              flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
