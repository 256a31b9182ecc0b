"""``mimo kernels``: the state of mimo's CPU decode kernels, and ``--build`` to build them ahead of time.

The engine builds them on first use (about 15 s with g++ on 2 cores, once per machine); building them here
means the first ``mimo generate`` does not wait. Without a C++ compiler and OpenMP they cannot build, and
mimo decodes with torch ops instead (the same results, slower).
"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--build", action="store_true", help="build (or load) them now; exit 1 if they cannot build")


def run(args: argparse.Namespace) -> int:
    from mimo.ops import kernels

    if not args.build:
        print(f"mimo's CPU decode kernels: {kernels.status()}")
        return 0
    print(f"building mimo's CPU decode kernels in {kernels.build_directory()} (once per machine; about 15 s on "
          "2 cores, less when the build is already there)", flush=True)
    t0 = time.perf_counter()
    ok = kernels.load()
    if not ok:
        print("they could not be built (the warning above says why): mimo will decode with torch ops instead",
              file=sys.stderr)
        return 1
    print(f"ready ({time.perf_counter() - t0:.1f} s)")
    return 0
