"""The commands over 2 ranks: ``mimo generate`` and ``mimo bench`` with --tensor-parallel-size (ranks started by
the command), and ``torchrun --nproc-per-node 2 -m mimo generate`` (ranks started by torchrun)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from mimo.cli.main import main
from tests.helpers import tiny_model_dir

PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def _generate(capsys, model_dir, *extra) -> str:
    assert main(["generate", "--model", model_dir, PROMPT, "--max-tokens", "12", *extra]) == 0
    return capsys.readouterr().out


def test_generate_and_bench_over_two_ranks(model_dir, capsys):
    one = _generate(capsys, model_dir, "--mtp", "2")
    assert _generate(capsys, model_dir, "--mtp", "2", "--tensor-parallel-size", "2", "--enable-expert-parallel") == one
    assert main(["bench", "--model", model_dir, "-tp", "2", "--new-tokens", "4", "--prefill-tokens", "32",
                 "--batches", "1,2", "--mtp", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["layout"] == "TP 2" and {(r["batch"], r["mtp"]) for r in result["decode"]} == {
        (1, 0), (2, 0), (1, 1), (2, 1)}


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_torchrun_starts_the_ranks(model_dir, capsys):
    one = _generate(capsys, model_dir)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    out = subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "mimo", "generate", "--model", model_dir, PROMPT,
                          "--max-tokens", "12"], capture_output=True, text=True, timeout=180,
                         env={**os.environ, "MIMO_CHECK_RANKS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == one  # rank 0 alone prints, the same completion as one process
