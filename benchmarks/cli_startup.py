"""How long the `mimo` command takes to answer before any model work: `--help` and `info`.

`mimo --help` must answer in well under a second: subcommand modules import torch only when they run.
Each command is run `--runs` times as a fresh process; the table gives the median and best wall time
beside a bare `python -c pass` (the floor any Python CLI pays). JSON with --json-out.

    .venv/bin/python benchmarks/cli_startup.py --json-out benchmarks/results/cli-startup.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import cpu_info, describe  # noqa: E402
from _results import write_json  # noqa: E402

BIN = os.path.dirname(sys.executable)
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "mimo --help": [os.path.join(BIN, "mimo"), "--help"],
    "mimo serve --help": [os.path.join(BIN, "mimo"), "serve", "--help"],
    "mimo info --preset flash": [os.path.join(BIN, "mimo"), "info", "--preset", "flash"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--json-out")
    args = p.parse_args()
    info = cpu_info()
    print(describe(info))
    result = {"machine": info, "runs": args.runs, "commands": {}}
    print(f"{'command':28} {'median s':>9} {'best s':>8}")
    for name, cmd in COMMANDS.items():
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - t)
        result["commands"][name] = {"median_s": statistics.median(times), "best_s": min(times), "samples_s": times}
        print(f"{name:28} {statistics.median(times):9.3f} {min(times):8.3f}")
    write_json(args.json_out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
