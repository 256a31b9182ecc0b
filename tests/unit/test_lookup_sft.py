"""scripts/lookup_sft.py: the forward and reverse lookups of a tool choice as chat data and as a plain-text corpus to
pre-train on, and their scoring."""

import json
import os
import re
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


def _corpus(tmp_path, selfcopy):
    out = tmp_path / f"corpus{selfcopy}"
    r = subprocess.run([sys.executable, SCRIPT, "corpus", "--out", str(out), "--files", "6", "--selfcopy", str(selfcopy),
                        "--heldout", "5"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return out


def test_corpus_sections_ask_every_name_by_its_words_or_repeat_it(tmp_path):
    kinds = {"reverse": 0, "selfcopy": 0}
    for selfcopy in (0.0, 0.5):
        out = _corpus(tmp_path, selfcopy)
        files = sorted((out / "train").glob("t_*.py"))
        assert len(files) == 6
        for path in files:
            previous: list[str] = []
            for section in path.read_text().strip("\n").split("\n\n"):
                lines = section.split("\n")
                if lines[0].startswith("? "):  # the questions of the registry before
                    registry = dict(line.split(": ", 1) for line in previous)
                    asked = [line[2:].rsplit(" -> ", 1) for line in lines]
                    assert sorted(name for _, name in asked) == sorted(registry)  # every name once
                    assert all(registry[name] == words for words, name in asked)
                    kinds["reverse"] += 1
                elif " -> " in lines[0]:  # a self-copy registry: each line ends with its own name
                    assert selfcopy > 0
                    assert all(line.split(": ", 1)[0] == line.rsplit(" -> ", 1)[1] for line in lines)
                    kinds["selfcopy"] += 1
                previous = lines
    assert kinds["reverse"] > 0 and kinds["selfcopy"] > 0
    rows = [json.loads(line) for line in (out / "heldout_reverse.jsonl").read_text().splitlines()]
    assert len(rows) == 5
    for ex in rows:
        registry, question = ex["prompt"].split("\n\n")
        assert question.startswith("? ") and question.endswith(" ->")
        assert f"{ex['answer']}: {question[2:-3]}" in registry.split("\n")
        assert [line.split(": ")[0] for line in registry.split("\n")] == ex["choices"]
    for ex in map(json.loads, (out / "heldout_selfcopy.jsonl").read_text().splitlines()):
        *done, last = ex["prompt"].split("\n")
        assert last.startswith(ex["answer"] + ": ") and last.endswith(" ->")
        assert all(line.split(": ", 1)[0] == line.rsplit(" -> ", 1)[1] for line in done)


def _tool_list(text):
    """{name: description} of a `--shape tools` registry, in order, and its whole parse."""
    blocks = re.findall(r"<function>\n<name>(\w+)</name>\n<description>([a-z_ >-]+)</description>\n<parameters>\n"
                        r"(?:<parameter>\n<name>[a-z]+</name>\n<type>(?:string|integer|number|boolean)</type>\n"
                        r"</parameter>\n){0,2}<required>\[[^]]*\]</required>\n</parameters>\n</function>", text)
    assert text.startswith("<tools>\n") and text.endswith("\n</tools>")
    assert text.count("<function>") == len(blocks)
    return dict(blocks)


def test_corpus_can_write_its_registries_as_the_release_tool_list(tmp_path):
    out = tmp_path / "tools"
    r = subprocess.run([sys.executable, SCRIPT, "corpus", "--out", str(out), "--files", "4", "--heldout", "5",
                        "--shape", "tools"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    sections = 0
    for path in sorted((out / "train").glob("t_*.py")):
        text = path.read_text()
        for registry, questions in zip(text.split("<tools>")[1:], text.split("</tools>")[1:]):
            tools = _tool_list("<tools>" + registry.split("</tools>")[0] + "</tools>")
            asked = [q[2:].rsplit(" -> ", 1) for q in questions.strip("\n").split("\n\n")[0].split("\n")]
            assert sorted(name for _, name in asked) == sorted(tools) and all(tools[n] == w for w, n in asked)
            sections += 1
    assert sections >= 4 * 6
    for ex in map(json.loads, (out / "heldout_reverse.jsonl").read_text().splitlines()):
        registry, question = ex["prompt"].split("\n\n")
        tools = _tool_list(registry)
        assert list(tools) == ex["choices"] and tools[ex["answer"]] == question[2:-3]


def test_corpus_mixes_in_real_python_without_the_files_mimo_eval_scores(tmp_path):
    from mimo.training.data import is_heldout

    root = tmp_path / "py"
    for i in range(300):  # short files named so that some fall in the 2% held-out split
        (root / f"pkg{i % 7}").mkdir(parents=True, exist_ok=True)
        (root / f"pkg{i % 7}" / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + len('abc')\n" * 5)
    held = [f"pkg{i % 7}/m{i}.py" for i in range(300) if is_heldout(f"pkg{i % 7}/m{i}.py")]
    assert held  # the check below means something
    out = tmp_path / "mixed"
    r = subprocess.run([sys.executable, SCRIPT, "corpus", "--out", str(out), "--files", "3", "--heldout", "2",
                        "--code-fraction", "0.25", "--code-root", str(root)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    copied = sorted(p.relative_to(out / "train" / "code").as_posix() for p in (out / "train" / "code").rglob("*.py"))
    assert copied and not set(copied) & set(held)
    for rel in copied:
        assert (out / "train" / "code" / rel).read_text() == (root / rel).read_text()
    share = float(r.stdout.rsplit(": ", 1)[1].split("%")[0]) / 100
    assert 0.25 <= share < 0.35  # stops at the first file past the fraction
    assert len(list((out / "train").glob("t_*.py"))) == 3
    # a root with too little code says so; a fraction of 1 (no lookup at all) is refused
    r = subprocess.run([sys.executable, SCRIPT, "corpus", "--out", str(tmp_path / "m2"), "--files", "3", "--heldout", "2",
                        "--code-fraction", "0.99", "--code-root", str(root)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode != 0 and "training tokens of code" in r.stderr
    assert not (tmp_path / "m2" / "train" / "code").exists()  # refused before copying anything
    most = float(r.stderr.split("at most ")[1].split(" ")[0])
    assert 0.25 < most < 0.99
    r = subprocess.run([sys.executable, SCRIPT, "corpus", "--out", str(tmp_path / "m3"), "--code-fraction", "1"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "[0, 1)" in r.stderr


def test_tool_list_self_copy_sections_end_each_description_with_its_name(tmp_path):
    out = tmp_path / "tools_copy"
    r = subprocess.run([sys.executable, SCRIPT, "corpus", "--out", str(out), "--files", "3", "--heldout", "4",
                        "--shape", "tools", "--selfcopy", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    for path in sorted((out / "train").glob("t_*.py")):
        text = path.read_text()
        assert "? " not in text  # nothing is asked
        for registry in text.split("<tools>")[1:]:
            tools = _tool_list("<tools>" + registry.split("</tools>")[0] + "</tools>")
            assert tools and all(d.endswith(f" -> {n}") and " -> " not in d[: -len(n) - 4] for n, d in tools.items())
    for ex in map(json.loads, (out / "heldout_selfcopy.jsonl").read_text().splitlines()):
        assert ex["answer"] == ex["choices"][-1] and ex["prompt"].endswith(" ->")
        # cut in the last description, after every earlier one repeated its own name
        assert ex["prompt"].rsplit("<description>", 1)[0].endswith(f"<name>{ex['answer']}</name>\n")
        named = re.findall(r"<name>(\w+)</name>\n<description>", ex["prompt"])
        assert named == ex["choices"]
        assert re.findall(r"-> (\w+)</description>", ex["prompt"]) == named[:-1]


def test_score_reads_plain_text_questions(tmp_path):
    out = _corpus(tmp_path, 0.0)
    model = tiny_model_dir(tmp_path / "model")
    r = subprocess.run([sys.executable, SCRIPT, "score", "--model", model, "--data", str(out / "heldout_selfcopy.jsonl")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "5 questions:" in r.stdout and "chance" in r.stdout


def test_bad_entries_and_missing_data_are_clear_errors(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, "data", "--out", str(tmp_path / "d"), "--entries", "1-3"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "2 <= LO <= HI" in r.stderr
    small = tiny_model_dir(tmp_path / "small")  # a 320-token vocabulary: too few whole words to draw from
    r = subprocess.run([sys.executable, SCRIPT, "data", "--out", str(tmp_path / "d"), "--tokenizer", small],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "one-token lowercase words" in r.stderr
    r = subprocess.run([sys.executable, SCRIPT, "corpus", "--out", str(tmp_path / "c"), "--selfcopy", "1.5"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "between 0 and 1" in r.stderr
    r = subprocess.run([sys.executable, SCRIPT, "score", "--model", str(tmp_path), "--data", str(tmp_path / "x.jsonl")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "not found" in r.stderr
