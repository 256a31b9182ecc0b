"""The post-training report (issue #15): a table like the paper's Table 7 and a plot like its Fig. 6.

Table: per domain, the held-out metric of the student before MOPD, of that domain's teacher, and of the student
after MOPD, from ``scripts/eval_domains.py --json-out`` files. Plot: the reward per domain against the step for
several ``mimo mopd`` runs (MOPD; the outcome reward alone, ``--kl-weight 0``; distillation alone, ``--alpha 0``),
from their ``metrics.jsonl`` (the on-policy samples' reward on train prompts, a rolling mean), one panel per domain.

    .venv/bin/python scripts/posttrain_report.py \\
        --before eval/sft.json --after eval/mopd.json \\
        --teacher tools=eval/t-tools.json --teacher arithmetic=eval/t-arith.json --teacher code=eval/t-code.json \\
        --run MOPD=runs/mopd --run "ORM only"=runs/orm --run "MOPD w/o ORM"=runs/mopd-noorm \\
        --out report/posttrain          # writes report/posttrain.md, .json and .png
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DOMAINS = ("tools", "arithmetic", "code")
METRIC = {"tools": "exact call", "arithmetic": "exact answer", "code": "pass@1"}


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise SystemExit(f"posttrain_report: expected NAME=PATH, got {text!r}")
    return name.strip(), value.strip()


def _scores(path: str) -> dict[str, float]:
    with open(path, encoding="utf-8") as f:
        return {d: v["score"] for d, v in json.load(f)["domains"].items()}


def _curves(run_dir: str, window: int) -> dict[str, tuple[list[int], list[float]]]:
    """Per domain, (steps, rolling mean of the step's reward) from a mimo mopd run's metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    out = {}
    for dom in DOMAINS:
        pts = [(r["step"], r["reward"][dom]) for r in rows if dom in r.get("reward", {})]
        if pts:
            vals = [v for _, v in pts]
            spans = [vals[max(0, i - window + 1) : i + 1] for i in range(len(vals))]
            out[dom] = ([s for s, _ in pts], [sum(w) / len(w) for w in spans])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="eval_domains.py JSON of the student before MOPD")
    ap.add_argument("--after", help="eval_domains.py JSON of the student after MOPD")
    ap.add_argument("--teacher", action="append", default=[], metavar="DOMAIN=JSON", help="a teacher's eval")
    ap.add_argument("--run", action="append", default=[], metavar="LABEL=DIR", help="a mimo mopd run to plot")
    ap.add_argument("--window", type=int, default=5, help="steps in the plot's rolling mean (default 5)")
    ap.add_argument("--out", required=True, help="path prefix of the .md, .json and .png written")
    args = ap.parse_args()
    if not (args.before or args.after or args.teacher or args.run):
        raise SystemExit("posttrain_report: nothing to report (give --before/--after/--teacher and/or --run)")
    teachers = dict(_pair(t) for t in args.teacher)
    unknown = [d for d in teachers if d not in DOMAINS]
    if unknown:
        raise SystemExit(f"posttrain_report: unknown domain {unknown[0]!r} (domains: {', '.join(DOMAINS)})")
    runs = [_pair(r) for r in args.run]
    before = _scores(args.before) if args.before else {}
    after = _scores(args.after) if args.after else {}
    teacher = {d: _scores(p).get(d) for d, p in teachers.items()}
    table = {d: {"metric": METRIC[d], "student_before": before.get(d), "teacher": teacher.get(d),
                 "student_after": after.get(d)} for d in DOMAINS}
    curves = {label: _curves(path, args.window) for label, path in runs}

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    lines = ["| domain (held-out metric, %) | student before MOPD | teacher | student after MOPD |",
             "|---|---|---|---|"]
    lines += [f"| {d} ({METRIC[d]}) | {cell(r['student_before'])} | {cell(r['teacher'])} | {cell(r['student_after'])} |"
              for d, r in table.items()]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump({"table": table, "curves": {label: {d: {"steps": s, "reward": v} for d, (s, v) in c.items()}
                                              for label, c in curves.items()},
                   "window": args.window}, f, indent=1)
    if curves:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display here
        import matplotlib.pyplot as plt

        doms = [d for d in DOMAINS if any(d in c for c in curves.values())]
        fig, axes = plt.subplots(1, len(doms), figsize=(4.5 * len(doms), 3.6), squeeze=False)
        for ax, dom in zip(axes[0], doms):
            for label, c in curves.items():
                if dom in c:
                    ax.plot(*c[dom], label=label)
            ax.set_title(f"{dom} ({METRIC[dom]}, train samples)")
            ax.set_xlabel("step")
            ax.set_ylabel(f"reward (rolling mean of {args.window})")
            ax.grid(alpha=0.3)
        axes[0][0].legend()
        fig.tight_layout()
        fig.savefig(args.out + ".png", dpi=120)
    print("\n".join(lines))
    print(f"wrote {args.out}.md, {args.out}.json" + (f", {args.out}.png" if curves else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
