"""scripts/posttrain_report.py: the Table-7-style table and the Fig.-6-style plot from eval files and run metrics."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "posttrain_report.py")


def _eval(path, **scores):
    path.write_text(json.dumps({"model": "m", "split": "heldout",
                                "domains": {d: {"examples": 10, "score": s} for d, s in scores.items()}}))
    return str(path)


def _run(tmp_path, name, rewards):
    d = tmp_path / name
    d.mkdir()
    with open(d / "metrics.jsonl", "w") as f:
        for step, r in enumerate(rewards, 1):
            f.write(json.dumps({"step": step, "reward": {"arithmetic": r}}) + "\n")
    return str(d)


def test_table_json_and_plot(tmp_path):
    out = tmp_path / "report" / "post"
    args = [sys.executable, SCRIPT, "--before", _eval(tmp_path / "b.json", tools=0.1, arithmetic=0.2, code=0.0),
            "--after", _eval(tmp_path / "a.json", tools=0.8, arithmetic=0.5, code=0.3),
            "--teacher", "tools=" + _eval(tmp_path / "t.json", tools=0.9, arithmetic=0.0),
            "--run", "MOPD=" + _run(tmp_path, "m", [0.0, 0.5, 1.0]), "--run", "ORM only=" + _run(tmp_path, "o", [0, 0, 1]),
            "--window", "2", "--out", str(out)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "report" / "post.md").read_text()
    assert "| tools (exact call) | 10.0 | 90.0 | 80.0 |" in md and "| code (pass@1) | 0.0 | - | 30.0 |" in md
    data = json.loads((tmp_path / "report" / "post.json").read_text())
    assert data["curves"]["MOPD"]["arithmetic"] == {"steps": [1, 2, 3], "reward": [0.0, 0.25, 0.75]}
    assert (tmp_path / "report" / "post.png").stat().st_size > 1000


def test_bad_arguments_are_named(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, "--teacher", "maths=x.json", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "unknown domain 'maths'" in r.stderr
    r = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path / "r")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "nothing to report" in r.stderr
