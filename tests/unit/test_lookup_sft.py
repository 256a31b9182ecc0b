"""scripts/lookup_sft.py: the forward and reverse lookups of a tool choice as chat data, and their scoring."""

import json
import os
import subprocess
import sys

from tests.helpers import tiny_model_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "lookup_sft.py")


def _data(tmp_path, direction):
    out = tmp_path / direction
    r = subprocess.run([sys.executable, SCRIPT, "data", "--out", str(out), "--direction", direction, "--train", "40",
                        "--heldout", "6", "--entries", "2-5"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()], out / "heldout.jsonl"


def test_each_question_asks_for_the_name_before_or_after_the_quoted_words(tmp_path):
    for direction in ("reverse", "forward"):
        rows, heldout = _data(tmp_path, direction)
        assert len(rows) == 40 and len(heldout.read_text().splitlines()) == 6
        for ex in rows:
            user, answer = ex["messages"][0]["content"], ex["messages"][1]["content"]
            *registry, question = user.split("\n")
            words = question.removeprefix("Which name has: ")
            assert answer == ex["answer"] and 2 <= len(ex["choices"]) == len(set(ex["choices"])) <= 5
            # the answer's line holds the quoted words, on the side the direction says
            line = f"{answer}: {words}" if direction == "reverse" else f"{words}: {answer}"
            assert line in registry and [r.split(": ")[0 if direction == "reverse" else 1] for r in registry] == ex["choices"]
    # fresh registries: names are rarely reused across questions, so none can be memorised
    names = [n for ex in rows for n in ex["choices"]]
    assert len(set(names)) > 0.9 * len(names)


def test_score_picks_among_the_offered_names_against_chance(tmp_path):
    _, heldout = _data(tmp_path, "reverse")
    model = tiny_model_dir(tmp_path / "model")
    out = tmp_path / "score.json"
    r = subprocess.run([sys.executable, SCRIPT, "score", "--model", model, "--data", str(heldout), "--json-out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    assert got["questions"] == 6 and 0 <= got["right"] <= 6 and 6 / 5 <= got["chance"] <= 6 / 2
    assert "right by whole-name likelihood" in r.stdout


def test_bad_entries_and_missing_data_are_clear_errors(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, "data", "--out", str(tmp_path / "d"), "--entries", "1-3"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "2 <= LO <= HI" in r.stderr
    small = tiny_model_dir(tmp_path / "small")  # a 320-token vocabulary: too few whole words to draw from
    r = subprocess.run([sys.executable, SCRIPT, "data", "--out", str(tmp_path / "d"), "--tokenizer", small],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "one-token lowercase words" in r.stderr
    r = subprocess.run([sys.executable, SCRIPT, "score", "--model", str(tmp_path), "--data", str(tmp_path / "x.jsonl")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "not found" in r.stderr
