"""scripts/tool_choice_probe.py: the tool a chat model picks among the offered ones, against chance."""

import json
import os
import subprocess
import sys

from mimo.posttrain.domains import write_domains
from tests.helpers import tiny_model_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "tool_choice_probe.py")


def test_counts_right_choices_against_chance_and_the_first_listed(tmp_path):
    model = tiny_model_dir(tmp_path / "model")
    data = tmp_path / "data"
    write_domains(data, seed=0, counts={"train": 6, "heldout": 6})
    out = tmp_path / "probe.json"
    r = subprocess.run([sys.executable, SCRIPT, "--model", model, "--data", str(data), "--limit", "4",
                        "--json-out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    with open(data / "tools" / "heldout.jsonl", encoding="utf-8") as f:
        examples = [json.loads(line) for line in f][:4]
    assert got["examples"] == 4

    def answering(e):  # the offered tools the request names alike: the reference's description, its arguments fit
        ref = e["reference"]
        want = next(t["function"] for t in e["tools"] if t["function"]["name"] == ref["name"])
        return [t["function"]["name"] for t in e["tools"] if t["function"]["description"] == want["description"]
                and set(t["function"]["parameters"].get("required", [])) <= set(ref["arguments"])
                <= set(t["function"]["parameters"]["properties"])]

    assert abs(got["chance"] - sum(len(answering(e)) / len(e["tools"]) for e in examples)) < 1e-9
    assert got["listed_first"] == sum(e["tools"][0]["function"]["name"] in answering(e) for e in examples)
    assert 0 <= got["right_greedy_among_names"] <= 4 and 0 <= got["right_whole_name_likelihood"] <= 4
    assert "the right tool" in r.stdout


def test_reads_the_tokenizer_from_elsewhere_for_a_checkpoint_without_one(tmp_path):
    from mimo.checkpoint import MiMoForCausalLM

    model = tiny_model_dir(tmp_path / "model")
    bare = tmp_path / "checkpoint"  # as a training checkpoint's model/: weights and config only
    MiMoForCausalLM.from_pretrained(model, dtype="float32").save_pretrained(bare)
    data = tmp_path / "data"
    write_domains(data, seed=0, counts={"train": 6, "heldout": 6})
    got = []
    for extra in (["--model", model], ["--model", str(bare), "--tokenizer", model]):
        out = tmp_path / f"probe{len(got)}.json"
        r = subprocess.run([sys.executable, SCRIPT, *extra, "--data", str(data), "--limit", "3", "--json-out", str(out)],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        got.append({k: v for k, v in json.loads(out.read_text()).items() if k != "model"})
    assert got[0] == got[1]


def test_names_the_missing_data(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, "--model", str(tmp_path), "--data", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "mimo domains --out" in r.stderr
