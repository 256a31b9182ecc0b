"""scripts/ship_chat_model.py: the chat model copied with its sampling defaults and a card built from measured files."""

import json
import os
import subprocess
import sys

from tests.helpers import tiny_model_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "ship_chat_model.py")


def _run_dir(tmp_path, accuracy):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "stage_seconds.json").write_text(json.dumps({"data": 2, "sft": 3120, "mopd": 1800}))
    (run / "data" / "manifest.json").write_text(json.dumps({"seed": 0, "python": "3.11.7", "domains": {
        "tools": {"train": {"count": 6000, "families": ["math", "re"]}, "heldout": {"count": 300, "families": ["calendar"]}}}}))
    (run / "report.md").write_text("| domain | before | teacher | after |\n|---|---|---|---|\n"
                                   "| tools (exact call) | 10.0 | 90.0 | 85.0 |\n")
    ev = tmp_path / "tools.json"
    ev.write_text(json.dumps({"examples": 100, "exact_call_accuracy": accuracy, "temperature": 0.0,
                              "per_family": {"calendar": accuracy}}))
    return str(run), str(ev)


def _ship(model, run, ev, out, *extra):
    return subprocess.run([sys.executable, SCRIPT, "--model", model, "--run", run, "--tools-eval", ev, "--out", out,
                           *extra], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_ships_the_model_its_sampling_defaults_and_a_card_of_measured_figures(tmp_path):
    model = tiny_model_dir(tmp_path / "model")
    run, ev = _run_dir(tmp_path, 0.86)
    out = str(tmp_path / "shipped")
    r = _ship(model, run, ev, out)
    assert r.returncode == 0, r.stderr
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md", "eval.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    gen = json.load(open(os.path.join(out, "generation_config.json")))
    assert (gen["temperature"], gen["top_p"], gen["do_sample"]) == (0.3, 0.95, True)
    card = open(os.path.join(out, "README.md")).read()
    assert "exact-call accuracy 86.0%" in card and "| tools (exact call) | 10.0 | 90.0 | 85.0 |" in card
    assert "| data | the verifiable domains' data (`mimo domains`) | 2 s |\n| sft |" in card  # in the order they ran
    assert "52.0 min" in card and "| all | | 82.0 min |" in card
    assert "| tools | 6000 (2 families) | 300 | calendar |" in card
    from mimo import LLM

    assert LLM(out).tokenizer.chat_template  # the engine loads what was shipped, template included
    r = _ship(model, run, ev, out)
    assert r.returncode != 0 and "--force" in r.stderr  # an existing model is not replaced silently
    assert _ship(model, run, ev, out, "--force").returncode == 0


def test_refuses_below_the_bar_and_names_what_is_missing(tmp_path):
    model = tiny_model_dir(tmp_path / "model")
    run, ev = _run_dir(tmp_path, 0.5)
    r = _ship(model, run, ev, str(tmp_path / "a"))
    assert r.returncode != 0 and "below --min-accuracy 80%" in r.stderr and not os.path.exists(tmp_path / "a")
    assert _ship(model, run, ev, str(tmp_path / "b"), "--min-accuracy", "0.4").returncode == 0
    r = _ship(str(tmp_path), run, ev, str(tmp_path / "c"))
    assert r.returncode != 0 and "has no config.json" in r.stderr
    os.remove(os.path.join(run, "stage_seconds.json"))
    r = _ship(model, run, ev, str(tmp_path / "d"))
    assert r.returncode != 0 and "stage times not found" in r.stderr
