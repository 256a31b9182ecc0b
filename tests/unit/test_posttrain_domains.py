"""The verifiable domains (mimo.posttrain.domains): deterministic, split by family, references score 100%."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from mimo.posttrain.domains import DOMAINS, families, generate_split, load, prompt_messages, score, write_domains
from mimo.posttrain.domains import arithmetic as arith
from mimo.posttrain.domains import synthetic_tools as syn
from mimo.posttrain.domains import tools as tooldom
from mimo.posttrain.domains.common import stream
from mimo.server.parsers import extract
from mimo.tokenizer import Tokenizer

NANO = Path(__file__).resolve().parents[2] / "models" / "mimo-nano"
# 128 training examples: every family of every domain appears (the tools domain has 53 training families).
SMALL = {"train": 128, "heldout": 16}


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


def _textwrap_example_with_width():
    # Drawn from the family's own stream (the written split may hold only one or two textwrap examples).
    rng = stream(0, "tools", "train", "textwrap")
    examples = (tooldom.generate("textwrap", i, rng) for i in range(200))
    return next(e for e in examples if e is not None and "width" in e["reference"]["arguments"])


def test_tool_metric_refuses_wrong_calls():
    ex = _textwrap_example_with_width()
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


def test_a_tool_the_request_cannot_tell_from_the_reference_is_right_too():
    # ipaddress's three functions share one docstring and take `address`: a request stating that description and
    # an address names each of them alike, so calling any of them is right; a tool it does tell apart is not.
    rng = stream(0, "tools", "heldout", "ipaddress")
    ex = next(e for e in (tooldom.generate("ipaddress", i, rng) for i in range(50))
              if e is not None and set(e["reference"]["arguments"]) == {"address"})
    ref = ex["reference"]
    assert tooldom.answers(ex) == {t["function"]["name"] for t in ex["tools"]} and len(ex["tools"]) == 3

    def call(name, args):
        return [{"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]

    for name in tooldom.answers(ex):
        assert tooldom.score(ex, call(name, ref["arguments"])) == 1.0
        assert tooldom.score(ex, call(name, {"address": "10.0.0.1"} if ref["arguments"]["address"] != "10.0.0.1"
                                      else {"address": "10.0.0.2"})) == 0.0
    assert tooldom.score(ex, call("ipaddress_ip_network", dict(ref["arguments"], strict=1))) == 0.0  # not a boolean
    # A sibling with a different description is a different tool.
    textwrap_ex = _textwrap_example_with_width()
    assert tooldom.answers(textwrap_ex) == {textwrap_ex["reference"]["name"]}


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


# ------------------------------------------------------------------------------- tools: a split that teaches copying

@pytest.fixture(scope="module")
def tool_train():
    return generate_split("tools", "train", 5000, seed=0)


def test_tool_train_split_is_deterministic_and_prefix_stable(tool_train):
    again = generate_split("tools", "train", 400, seed=0)
    assert again == tool_train[:400]  # same seed, same examples; more examples leave the first ones unchanged
    assert generate_split("tools", "train", 400, seed=1) != again


def test_no_heldout_name_or_family_in_tool_training(tool_train):
    held = set(tooldom.HELDOUT)
    assert not held & set(syn.FAMILIES) and not held & {f.removeprefix("api.") for f in syn.FAMILIES}
    held_names = {n for m in held for n in tooldom.build_tools(m)}
    prefixes = tuple(m.replace(".", "_") + "_" for m in held)
    for ex in tool_train:
        assert ex["family"] not in held
        for t in ex["tools"]:
            name = t["function"]["name"]
            assert name not in held_names and not name.startswith(prefixes)
            assert not any(m in name.lower() for m in held), name
    # No synthetic vocabulary word is a held-out module's name.
    words = set()
    for d in syn.DOMAINS.values():
        words |= {*d.prefixes, *d.nouns, *d.verbs, *(n for f in d.fields for n in f.names)}
    assert not words & held


def test_every_tool_reference_validates_and_states_its_values(tool_train):
    for ex in tool_train:
        ref = ex["reference"]
        names = [t["function"]["name"] for t in ex["tools"]]
        assert len(names) == len(set(names)) and names.count(ref["name"]) == 1
        tool = next(t for t in ex["tools"] if t["function"]["name"] == ref["name"])
        params = tool["function"]["parameters"]
        assert tooldom.validate(ref["arguments"], params), (ref, params)
        assert set(params["required"]) <= set(params["properties"])
        call = ex["messages"][1]["tool_calls"][0]["function"]
        assert call["name"] == ref["name"] and json.loads(call["arguments"]) == ref["arguments"]
        # Every stated value can be copied from the request (booleans may be said in words).
        request = ex["messages"][0]["content"]
        for value in ref["arguments"].values():
            items = value if isinstance(value, list) else [value]
            for v in items:
                if not isinstance(v, bool):
                    assert str(v) in request or json.dumps(v, ensure_ascii=False) in request, (v, request)


def test_tool_training_offers_many_tools_in_varied_lists(tool_train):
    synthetic = [e for e in tool_train if e["family"].startswith("api.")]
    assert len({e["reference"]["name"] for e in synthetic}) >= 1000  # too many to memorise: names must be copied
    assert len({t["function"]["name"] for e in tool_train for t in e["tools"]}) >= 3000
    sizes = {len(e["tools"]) for e in tool_train}
    assert sizes == {2, 3, 4, 5}  # 1-4 distractors
    positions = {[t["function"]["name"] for t in e["tools"]].index(e["reference"]["name"]) for e in tool_train}
    assert positions == {0, 1, 2, 3, 4}
    # Distractors from other families, so the description, not a name prefix, identifies the tool.
    stdlib_prefixes = tuple(m.replace(".", "_") + "_" for m in tooldom.STDLIB)
    mixed = sum(any(t["function"]["name"].startswith(stdlib_prefixes) for t in e["tools"]) for e in synthetic)
    assert 0.2 < mixed / len(synthetic) < 0.8
    # Standard-library examples also come in the held-out shape: the target among other tools of its module, sorted.
    stdlib = [e for e in tool_train if e["family"] in tooldom.STDLIB]
    names = [[t["function"]["name"] for t in e["tools"]] for e in stdlib]
    shaped = [n for e, n in zip(stdlib, names) if len(n) > 2 and n == sorted(n)
              and all(x.startswith(e["family"].replace(".", "_") + "_") for x in n)]
    assert 0.3 < len(shaped) / len(stdlib) < 0.65
    # Both request styles: values stated as `k = v` (the held-out form) and in natural phrasing.
    stated = sum(" = " in e["messages"][0]["content"] for e in synthetic)
    assert 0.15 < stated / len(synthetic) < 0.6
    # Every parameter type occurs, optional parameters and defaults too.
    kinds = set()
    for e in synthetic:
        for t in e["tools"]:
            for p in t["function"]["parameters"]["properties"].values():
                kinds.add(("enum" if "enum" in p else p["type"]) + ("[]" + p["items"]["type"] if p["type"] == "array" else ""))
                kinds.add("default" if "default" in p else "")
    assert {"string", "integer", "number", "boolean", "enum", "array[]string", "array[]integer", "default"} <= kinds


def test_heldout_tool_examples_keep_their_shape():
    for ex in generate_split("tools", "heldout", 40, seed=0):
        names = [t["function"]["name"] for t in ex["tools"]]
        prefix = ex["family"].replace(".", "_") + "_"
        assert names == sorted(names) and len(names) == min(4, len(tooldom.build_tools(ex["family"])))
        assert all(n.startswith(prefix) for n in names)
        assert " = " in ex["messages"][0]["content"]


def test_tool_conversations_fit_the_token_budget(tool_train, tokenizer):
    from mimo.posttrain.sft_data import to_row

    lengths = sorted(len(to_row(tokenizer, e).ids) for e in tool_train[:300])
    # The system prompt with the tool list is most of it: ~270 tokens of template, ~100-150 per tool.
    assert lengths[len(lengths) // 2] <= 850 and lengths[int(0.9 * len(lengths))] <= 1150
    for e in tool_train[:300]:
        for t in e["tools"]:
            d = t["function"]["description"]
            assert len(d) <= 160 and "\n" not in d


def test_cli_writes_the_domains_once(tmp_path, capsys):
    from mimo.cli.main import main

    out = tmp_path / "data"
    assert main(["domains", "--out", str(out), "--train", "60", "--heldout", "8"]) == 0
    assert "tools" in capsys.readouterr().out
    assert len((out / "tools" / "heldout.jsonl").read_text().splitlines()) == 8
    assert main(["domains", "--out", str(out), "--train", "60", "--heldout", "8"]) == 2  # never overwritten silently
    assert "already holds" in capsys.readouterr().err
