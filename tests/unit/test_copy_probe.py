"""scripts/copy_probe.py: forward copying of a made-up name, and the reverse lookup a tool list needs."""

import json
import os
import subprocess
import sys

from tests.helpers import tiny_model_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "copy_probe.py")
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import copy_probe  # noqa: E402


def _run(tmp_path, *extra):
    model = tiny_model_dir(tmp_path / "model")
    out = tmp_path / "probe.json"
    r = subprocess.run([sys.executable, SCRIPT, "--model", model, "--json-out", str(out), "--distances", "0,30", *extra],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout, json.loads(out.read_text())


def test_forward_copy_reports_every_distance(tmp_path):
    stdout, got = _run(tmp_path)
    assert set(got["copied_by_distance"]) == {"0", "30"}
    assert all(0 <= v <= 1 for v in got["copied_by_distance"].values())
    assert "names copied" in stdout


def test_reverse_lookup_scores_a_choice_among_each_registry_and_greedy(tmp_path):
    stdout, got = _run(tmp_path, "--reverse")
    assert got["reverse"] and got["registry"] == copy_probe.REGISTRY
    assert set(got["right_by_distance"]) == {"0", "30"}
    for v in got["right_by_distance"].values():
        assert set(v) == {"choice", "greedy"} and all(0 <= x <= 1 for x in v.values())
    assert "by likelihood among 6 (chance 2)" in stdout
    # every name is asked once, and the names split into whole registries
    assert len(copy_probe.NAMES) == len(copy_probe.ABOUT) and len(copy_probe.NAMES) % copy_probe.REGISTRY == 0


def test_rejects_bad_distances(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, "--model", str(tmp_path), "--distances", "0,x"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "comma-separated integers" in r.stderr


def test_lookups_score_both_kinds_of_the_synthetic_data_against_chance(tmp_path):
    stdout, got = _run(tmp_path, "--lookups", "2")
    for kind in ("forward", "reverse"):
        row = got["lookups"][kind]
        assert row["queries"] >= 2 * 3 and 0 <= row["right"] <= row["queries"] and 0 < row["chance"] < row["queries"]
    assert "reverse lookups:" in stdout


def test_synthetic_sections_locate_their_answers():
    import random

    from mimo.training.synthetic import lookup_section, reverse_lookup_section

    rng = random.Random(0)
    for make in (lookup_section, reverse_lookup_section):
        for _ in range(20):
            text, queries = make(rng)
            assert queries
            for offset, answer, choices in queries:
                assert text[offset:offset + len(answer)] == answer and answer in choices
                assert answer not in text[offset - 40 if offset > 40 else 0:offset]  # the asked line gives it only once
