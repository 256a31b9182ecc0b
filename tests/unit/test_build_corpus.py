"""scripts/build_corpus.py: the chat base's corpus as one command, with a manifest whose fingerprint says which."""

import hashlib
import json
import os
import subprocess
import sys

from mimo.training.data import stdlib_files

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "build_corpus.py")


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_copies_what_the_trainer_reads_and_fingerprints_it(tmp_path):
    out = tmp_path / "corpus"
    r = _run("--out", str(out), "--packages", "mimo", "--no-stdlib")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "MANIFEST.json").read_text())
    want = {f"pkgs/mimo/{rel}" for rel, _ in stdlib_files(os.path.join(ROOT, "mimo"))}
    got = stdlib_files(str(out))  # what `mimo train --data-root OUT` reads
    assert {rel for rel, _ in got} == want and manifest["files"] == len(want) > 50
    assert "pkgs/mimo/engine/policy.py" in want and manifest["stdlib"] is False
    entries = sorted((rel, hashlib.sha1(open(path, "rb").read()).hexdigest()) for rel, path in got)
    fingerprint = hashlib.sha256("".join(f"{p}\0{h}\n" for p, h in entries).encode()).hexdigest()
    assert manifest["fingerprint"] == fingerprint


def test_refuses_a_folder_in_use_and_an_unknown_package(tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = _run("--out", str(out), "--packages", "mimo", "--no-stdlib")
    assert r.returncode != 0 and "not empty" in r.stderr
    other = tmp_path / "other"
    r = _run("--out", str(other), "--packages", "mimo,no_such_package_here", "--no-stdlib")
    assert r.returncode != 0 and "no_such_package_here" in r.stderr and not other.exists()
