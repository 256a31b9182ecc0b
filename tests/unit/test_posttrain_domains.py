"""The verifiable domains (mimo.posttrain.domains): deterministic, split by family, references score 100%."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from mimo.posttrain.domains import DOMAINS, families, generate_split, load, prompt_messages, score, write_domains
from mimo.posttrain.domains import arithmetic as arith
from mimo.posttrain.domains import tools as tooldom
from mimo.server.parsers import extract
from mimo.tokenizer import Tokenizer

NANO = Path(__file__).resolve().parents[2] / "models" / "mimo-nano"
SMALL = {"train": 48, "heldout": 16}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("domains")
    write_domains(d, seed=0, counts=SMALL)
    return d


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_pretrained(NANO)


def _completion(tokenizer, example):
    """The first assistant turn as the model would write it: the render of the conversation up to and
    including that turn, minus the render of the prompt with its generation prompt."""
    prompt = prompt_messages(example)
    turn = example["messages"][len(prompt)]
    kwargs = dict(tools=example.get("tools"), **example.get("chat_template_kwargs", {}))
    before = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, **kwargs)
    full = tokenizer.apply_chat_template(prompt + [turn], add_generation_prompt=False, **kwargs)
    assert full.startswith(before)
    text = full[len(before):]
    assert text.endswith("<|im_end|>")
    return text[: -len("<|im_end|>")]


def test_same_seed_same_files_other_seed_other_files(tmp_path, data_dir):
    write_domains(tmp_path / "again", seed=0, counts=SMALL)
    write_domains(tmp_path / "other", seed=1, counts=SMALL)
    for domain in DOMAINS:
        for split in ("train", "heldout"):
            name = f"{domain}/{split}.jsonl"
            assert (data_dir / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
            assert (data_dir / name).read_bytes() != (tmp_path / "other" / name).read_bytes()
    assert (data_dir / "manifest.json").read_bytes() == (tmp_path / "again" / "manifest.json").read_bytes()


def test_splits_are_disjoint_by_family_and_the_manifest_says_so(data_dir):
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["seed"] == 0
    for domain, mod in DOMAINS.items():
        train, held = set(families(domain, "train")), set(families(domain, "heldout"))
        assert train and held and not train & held and train | held == set(mod.FAMILIES) and held == set(mod.HELDOUT)
        for split, fams in (("train", train), ("heldout", held)):
            examples = load(data_dir, domain, split)
            assert len(examples) == SMALL[split] == manifest["domains"][domain][split]["count"]
            assert {e["family"] for e in examples} == fams  # every family present, no other
            assert manifest["domains"][domain][split]["families"] == families(domain, split)
            assert len({e["id"] for e in examples}) == len(examples)
    # Held-out tool schemas come from modules never seen in training: no tool name is shared.
    train_tools = {t["function"]["name"] for e in load(data_dir, "tools", "train") for t in e["tools"]}
    held_tools = {t["function"]["name"] for e in load(data_dir, "tools", "heldout") for t in e["tools"]}
    assert not train_tools & held_tools


def test_every_message_renders_through_the_shipped_chat_template(data_dir, tokenizer):
    for domain in DOMAINS:
        for split in ("train", "heldout"):
            for ex in load(data_dir, domain, split)[:8]:
                kwargs = dict(tools=ex.get("tools"), **ex.get("chat_template_kwargs", {}))
                ids = tokenizer.apply_chat_template(ex["messages"], add_generation_prompt=False, tokenize=True, **kwargs)
                assert len(ids) > 10
                prompt = tokenizer.apply_chat_template(prompt_messages(ex), **kwargs)
                assert prompt.endswith("<|im_start|>assistant\n" if domain == "arithmetic" else "<think></think>")


def test_tool_references_parse_with_the_server_parser_and_score_one(data_dir, tokenizer):
    for split in ("train", "heldout"):
        for ex in load(data_dir, "tools", split):
            text = _completion(tokenizer, ex)
            parsed = extract(text, ex["tools"])
            assert len(parsed.tool_calls) == 1, text
            assert score(ex, parsed.tool_calls) == 1.0, (text, parsed.tool_calls, ex["reference"])
            # The reference call validates against the schema of the tool it names.
            tool = next(t for t in ex["tools"] if t["function"]["name"] == ex["reference"]["name"])
            assert tooldom.validate(ex["reference"]["arguments"], tool["function"]["parameters"])


def test_tool_metric_refuses_wrong_calls(data_dir):
    ex = next(e for e in load(data_dir, "tools", "train") if e["family"] == "textwrap" and "width" in e["reference"]["arguments"])
    ref = ex["reference"]

    def call(name, args):
        return [{"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]

    assert tooldom.score(ex, call(ref["name"], ref["arguments"])) == 1.0
    other = next(t["function"]["name"] for t in ex["tools"] if t["function"]["name"] != ref["name"])
    assert tooldom.score(ex, call(other, ref["arguments"])) == 0.0  # wrong function
    wrong = dict(ref["arguments"], width=ref["arguments"]["width"] + 1)
    assert tooldom.score(ex, call(ref["name"], wrong)) == 0.0  # a value the request did not give
    as_text = dict(ref["arguments"], width=str(ref["arguments"]["width"]))
    assert tooldom.score(ex, call(ref["name"], as_text)) == 0.0  # does not validate: "20" is not an integer
    extra = dict(ref["arguments"], colour="red")
    assert tooldom.score(ex, call(ref["name"], extra)) == 0.0  # unknown parameter
    missing = {k: v for k, v in ref["arguments"].items() if k != "text"}
    assert tooldom.score(ex, call(ref["name"], missing)) == 0.0  # required parameter missing
    assert tooldom.score(ex, call(ref["name"], ref["arguments"]) * 2) == 0.0  # two calls
    assert tooldom.score(ex, []) == 0.0
    assert tooldom.score(ex, [{"type": "function", "function": {"name": ref["name"], "arguments": "{not json"}}]) == 0.0


def test_arithmetic_references_are_right_and_score_one(data_dir, tokenizer):
    ops = {"+": int.__add__, "-": int.__sub__, "×": int.__mul__, "÷": int.__floordiv__}
    for split in ("train", "heldout"):
        for ex in load(data_dir, "arithmetic", split):
            text = _completion(tokenizer, ex)
            assert text.startswith("<think>") and "</think>" in text
            assert score(ex, text) == 1.0
            # Every worked step's result is right (checked independently of the generator).
            steps = re.findall(r"So (\d+) ([-+×÷]) (\d+) = (\d+)\.", ex["messages"][1]["reasoning_content"])
            assert steps
            for a, op, b, c in steps:
                assert ops[op](int(a), int(b)) == int(c)
                if op == "÷":
                    assert int(a) % int(b) == 0
            assert int(steps[-1][3]) == ex["reference"]["answer"]
    ex = load(data_dir, "arithmetic", "train")[0]
    n = ex["reference"]["answer"]
    assert arith.score(ex, f"<think>x</think>So.\nAnswer: {n + 1}") == 0.0
    assert arith.score(ex, f"<think>Answer: {n}</think>no answer line") == 0.0  # the scratchpad does not count
    assert arith.score(ex, f"Answer: {n:,}") == 1.0


def test_code_references_pass_their_tests_in_the_sandbox(data_dir):
    # A sample (two per family and split) keeps this fast; every reference also ran in-process at generation.
    for split in ("train", "heldout"):
        examples = load(data_dir, "code", split)
        seen: dict[str, int] = {}
        for ex in examples:
            if seen.get(ex["family"], 0) >= 2:
                continue
            seen[ex["family"]] = seen.get(ex["family"], 0) + 1
            assert score(ex, ex["messages"][1]["content"]) == 1.0, ex["reference"]
        assert set(seen) == set(families("code", split))
    ex = load(data_dir, "code", "train")[0]
    wrong = ex["reference"]["solution"].replace("return", "return None  #", 1)
    assert score(ex, f"```python\n{wrong}```") == 0.0
    assert score(ex, "I cannot write this.") == 0.0


def test_generation_does_not_depend_on_other_families_or_counts():
    # Each (split, family) has its own stream: asking for more examples leaves the first ones unchanged.
    a = generate_split("arithmetic", "train", 12, seed=3)
    b = generate_split("arithmetic", "train", 24, seed=3)
    assert a == b[:12]
    assert copy.deepcopy(a) == a
