"""The code sandbox (mimo.posttrain.sandbox): model answers are untrusted code; limits hold, the caller survives."""

from __future__ import annotations

import glob
import os
import tempfile

import pytest

from mimo.posttrain.sandbox import run

pytestmark = pytest.mark.skipif(not hasattr(os, "wait4"), reason="the sandbox needs POSIX (os.wait4, rlimits)")


def _scratch_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "mimo-sandbox-*")))


def test_passing_and_failing_tests_are_told_apart():
    code = "def add(a, b):\n    return a + b\n"
    ok = run(code, "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n")
    assert ok.passed and ok.returncode == 0 and not ok.timed_out and ok.killed_by is None
    bad = run(code, "assert add(2, 3) == 6\n")
    assert not bad.passed and bad.returncode == 1 and "AssertionError" in bad.stderr_tail
    broken = run("def add(a, b) return a + b\n", "assert add(2, 3) == 5\n")
    assert not broken.passed and "SyntaxError" in broken.stderr_tail


def test_exiting_early_is_not_a_pass():
    # An answer that leaves before its tests run must not pass, whatever status it exits with.
    assert not run("import os\nos._exit(0)\n", "assert False\n").passed
    assert not run("import sys\nsys.exit(0)\n", "assert False\n").passed
    assert not run("print('MIMO-SANDBOX-PASS 00')\nimport os\nos._exit(0)\n", "assert False\n").passed


def test_infinite_loop_is_killed_by_the_cpu_limit():
    r = run("while True:\n    pass\n", "", cpu_s=1, wall_s=5)
    assert not r.passed and not r.timed_out and r.killed_by == "cpu"
    assert r.seconds < 4  # 1 s of CPU (+1 s hard limit at worst), well inside the wall limit


def test_sleeping_child_is_killed_by_the_wall_clock():
    # Sleeping uses no CPU time: only the wall clock stops it, and the whole group goes with it.
    r = run("import time\ntime.sleep(60)\n", "", cpu_s=1, wall_s=1)
    assert not r.passed and r.timed_out and r.killed_by == "wall" and r.seconds < 3


def test_fork_bomb_is_stopped_and_the_caller_can_run_the_next_job():
    r = run("import os\nwhile True:\n    os.fork()\n", "", cpu_s=1, wall_s=3)
    assert not r.passed and r.seconds < 4
    assert "not allowed" in r.stderr_tail or r.killed_by is not None
    r = run("import subprocess\nsubprocess.run(['sh', '-c', 'sleep 100'])\n", "", wall_s=3)
    assert not r.passed
    assert run("x = 1\n", "assert x == 1\n").passed  # the caller and the machinery still work


def test_ten_gigabyte_allocation_fails_inside_the_child():
    r = run("buf = bytearray(10 * 1024 ** 3)\n", "", mem_mb=256)
    assert not r.passed and ("MemoryError" in r.stderr_tail or r.killed_by is not None)
    assert r.seconds < 4
    assert run("buf = bytearray(1024 ** 2)\n", "assert len(buf) == 1024 ** 2\n", mem_mb=256).passed


def test_network_is_refused():
    for code in ("import socket\nsocket.socket()\n",
                 "import socket\nsocket.create_connection(('127.0.0.1', 9))\n",
                 "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/')\n"):
        r = run(code, "")
        assert not r.passed and "socket" in r.stderr_tail and "not allowed" in r.stderr_tail


def test_scratch_directory_is_the_cwd_and_is_removed():
    before = _scratch_dirs()
    r = run("import os\nopen('note.txt', 'w').write('hi')\nprint(os.getcwd())\n", "assert open('note.txt').read() == 'hi'\n")
    assert r.passed
    cwd = r.stdout_tail.strip().splitlines()[-1]
    assert os.path.basename(cwd).startswith("mimo-sandbox-") and not os.path.exists(cwd)
    assert _scratch_dirs() == before


def test_writes_outside_the_scratch_directory_are_refused(tmp_path):
    target = tmp_path / "outside.txt"
    r = run(f"open({str(target)!r}, 'w').write('x')\n", "")
    assert not r.passed and not target.exists()
    keep = tmp_path / "keep.txt"
    keep.write_text("keep")
    r = run(f"import os\nos.remove({str(keep)!r})\n", "")
    assert not r.passed and keep.read_text() == "keep"


def test_output_is_capped_and_only_its_tail_returned():
    r = run("while True:\n    print('x' * 1000)\n", "", fsize_mb=1, wall_s=5)
    assert not r.passed and len(r.stdout_tail) <= 2000
