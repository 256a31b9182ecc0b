"""Can a model copy a name it has never seen from earlier in its context? (issue #15's bottleneck)

A tool call copies a function name from the tool list and values from the request; a model that cannot copy a
made-up identifier from a few lines up cannot learn that in SFT. For each distance (tokens of filler code from
``json/decoder.py`` between the definition and the use), every made-up function is defined, the filler follows,
then ``result = <first word>_`` is given and the model's greedy continuation must finish the name. Prints the
fraction right per distance; ``--json-out`` writes it.

    .venv/bin/python scripts/copy_probe.py --model models/mimo-nano
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (with its tokenizer, unless --tokenizer)")
    ap.add_argument("--tokenizer", help="tokenizer directory (a training checkpoint's model has none: the run's)")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    from mimo import LLM, SamplingParams
    from mimo.tokenizer import Tokenizer

    llm = LLM(args.model, tokenizer=Tokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None)
    tok = llm.tokenizer
    with open(os.path.join(os.path.dirname(json.__file__), "decoder.py"), encoding="utf-8") as f:
        filler = tok.encode(f.read())
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    result: dict[str, float] = {}
    for n in DISTANCES:
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


if __name__ == "__main__":
    sys.exit(main())
