"""Build a pre-training corpus of Python source: the standard library plus installed packages, as one folder.

mimo-nano trains on the standard library alone (``mimo train`` with no ``--data-root``). The chat model's base
(models/mimo-nano-chat/README.md) also read the source of twenty packages installed beside mimo, for more code and
more of the names, numbers and call shapes that tools and arithmetic need. This copies what ``mimo train`` would
read from each, and nothing else:

    OUT/stdlib/...        every .py file of this Python's standard library
    OUT/pkgs/NAME/...     every .py file of the installed package NAME (found without importing it)

skipping what the trainer skips (folders named site-packages, dist-packages, test, tests, idle_test, __pycache__;
files over 1 MB or not UTF-8). OUT/MANIFEST.json lists the packages' versions, the files, and a fingerprint over
(path, SHA-1 of contents) of every file: the same fingerprint means the same corpus. Then:

    .venv/bin/python scripts/build_corpus.py --out corpus --packages transformers,torch,sympy
    .venv/bin/mimo train --preset nano --data-root corpus ...

The copy is plain files (no links), so the corpus stays as it was when the packages are upgraded.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402

from mimo.training.data import stdlib_files, stdlib_root  # noqa: E402

# what the chat model's base read (models/mimo-nano-chat/README.md); jinja2 and tqdm stay out: they are the
# third-party code the speculation benchmark prompts with
CHAT_BASE_PACKAGES = ("transformers", "torch", "sympy", "networkx", "numpy", "matplotlib", "openai", "pip",
                      "setuptools", "pygments", "huggingface_hub", "pydantic", "fastapi", "starlette", "uvicorn",
                      "httpx", "mpmath", "torchgen", "fontTools", "PIL")


def package_dir(name: str) -> str:
    """The folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"build_corpus: {name!r} is not an installed package (a folder with an __init__.py)")
    return list(spec.submodule_search_locations)[0]


def version(name: str) -> str | None:
    """The installed distribution's version for a top-level package name, where one provides it."""
    for dist in importlib.metadata.packages_distributions().get(name, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to create (must not exist, or be empty)")
    ap.add_argument("--packages", default=",".join(CHAT_BASE_PACKAGES),
                    help="comma-separated top-level package names (default: the chat model base's twenty)")
    ap.add_argument("--no-stdlib", action="store_true", help="leave the standard library out")
    args = ap.parse_args()
    if os.path.exists(args.out) and os.listdir(args.out):
        raise SystemExit(f"build_corpus: {args.out} exists and is not empty")
    names = [n.strip() for n in args.packages.split(",") if n.strip()]
    sources = [] if args.no_stdlib else [("stdlib", stdlib_root())]
    sources += [(f"pkgs/{n}", package_dir(n)) for n in names]  # every name checked before anything is copied
    listed = [(dest, rel, path) for dest, root in sources for rel, path in stdlib_files(root)]
    entries, total = [], 0
    for dest, rel, path in tqdm(listed, desc="copying", unit="file"):
        target = os.path.join(args.out, dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(path, "rb") as f:  # read once: written as it is, and hashed
            data = f.read()
        with open(target, "wb") as f:
            f.write(data)
        entries.append((f"{dest}/{rel}", hashlib.sha1(data).hexdigest()))
        total += len(data)
    entries.sort()
    fingerprint = hashlib.sha256("".join(f"{p}\0{h}\n" for p, h in entries).encode()).hexdigest()
    manifest = {"python": sys.version.split()[0], "stdlib": not args.no_stdlib,
                "packages": {n: version(n) for n in names}, "files": len(entries),
                "bytes": total,
                "fingerprint": fingerprint}
    with open(os.path.join(args.out, "MANIFEST.json"), "w") as f:
        json.dump({**manifest, "file_sha1": dict(entries)}, f, indent=1)
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
