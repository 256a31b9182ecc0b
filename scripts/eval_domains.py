"""Score a chat model on the held-out splits of the three verifiable domains (issue #15), greedy.

tools: exact-call accuracy (the server's own parser reads the reply); arithmetic: exact answer; code: pass@1
in the sandbox. Prompts are the held-out conversations up to their first assistant turn, rendered by the
model's chat template with the example's tools and template settings.

    .venv/bin/python scripts/eval_domains.py --model DIR --data DIR [--per-domain 50] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mimo import LLM, SamplingParams  # noqa: E402
from mimo.chat_format.parsers import extract  # noqa: E402
from mimo.posttrain.domains import arithmetic, code, tools  # noqa: E402

MAX_TOKENS = {"tools": 160, "arithmetic": 320, "code": 200}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="what write_domains wrote (has tools/heldout.jsonl, ...)")
    ap.add_argument("--per-domain", type=int, default=50)
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    llm = LLM(args.model, max_num_seqs=16)
    tok = llm.tokenizer
    result = {"model": args.model, "split": args.split, "domains": {}}
    for domain, scorer in (("tools", None), ("arithmetic", arithmetic.score), ("code", code.score)):
        with open(os.path.join(args.data, domain, f"{args.split}.jsonl"), encoding="utf-8") as f:
            examples = [json.loads(line) for line in f][: args.per_domain]
        prompts = []
        for ex in examples:
            first = next(i for i, m in enumerate(ex["messages"]) if m["role"] == "assistant")
            prompts.append(tok.apply_chat_template(ex["messages"][:first], tools=ex.get("tools"),
                                                   add_generation_prompt=True,
                                                   **ex.get("chat_template_kwargs", {})))
        t = time.perf_counter()
        # special tokens stay in the text (<tool_call> is one); the turn ends at <|im_end|>
        outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS[domain],
                                                    stop_token_ids=[tok.token_to_id("<|im_end|>")],
                                                    skip_special_tokens=False))
        seconds = time.perf_counter() - t
        scores = []
        for ex, out in zip(examples, outs):
            text = out.outputs[0].text
            if domain == "tools":
                thinking = bool(ex.get("chat_template_kwargs", {}).get("enable_thinking"))
                parsed = extract(text, ex.get("tools"), starts_in_reasoning=thinking)
                scores.append(tools.score(ex, parsed.tool_calls))
            else:
                scores.append(scorer(ex, text))
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
