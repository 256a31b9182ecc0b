"""Tokenizer: BPE training, save/load, chat template (also against transformers), incremental detokenisation."""

from __future__ import annotations

import json
import os
import sysconfig

import pytest

from mimo.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, IncrementalDetokenizer, Tokenizer, train_bpe

_FILES = ("abc.py", "bisect.py", "keyword.py")
_SOURCE = (
    "# -*- coding: utf-8 -*-\r\n"
    'def grüß(name: str = "世界") -> str:\n'
    '\t"""Say hello 👋🏽 to naïve café users — «quoted»."""\n'
    "    return f'你好, {name}!  '  \n"
    "x = '\\u00e9' + \"\\N{SNOWMAN}\" + '☃' + chr(0) + '\x7f'\n"
)


def _texts() -> list[str]:
    lib = sysconfig.get_paths()["stdlib"]
    out = []
    for name in _FILES:
        with open(os.path.join(lib, name), encoding="utf-8") as f:
            out.append(f.read())
    return out


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(train_bpe(_texts(), 400))


@pytest.fixture(scope="module")
def saved(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> str:
    d = str(tmp_path_factory.mktemp("tok"))
    tok.save_pretrained(d)
    return d


def _tool_call(name: str, args: object) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": args}}


_TOOLS = [{"type": "function", "function": {
    "name": "run", "description": "Run a <shell> command",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}}]

CONVERSATIONS = {
    "plain": [{"role": "user", "content": "Write fib in Python."}],
    "system": [{"role": "system", "content": "You are MiMo."}, {"role": "user", "content": "hi"},
               {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "再见 👋"}],
    "agent": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "List files, twice."},
        {"role": "assistant", "content": "Sure.", "reasoning_content": "Use the run tool.",
         "tool_calls": [_tool_call("run", {"cmd": "ls -l"}), _tool_call("run", {"cmd": "ls", "n": 2, "o": [1, "é"]})]},
        {"role": "tool", "content": "a.py"},
        {"role": "tool", "content": "b.py"},
        {"role": "assistant", "content": "Done.", "reasoning_content": "\nBoth ran.\n"},
        {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
    ],
}


def test_special_tokens_come_first(tok: Tokenizer) -> None:
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.eos_token_id == tok.pad_token_id == 0 and tok.bos_token_id is None
    assert tok.special_token_ids == frozenset(range(len(SPECIAL_TOKENS)))
    assert tok.vocab_size == 400
    assert tok.token_to_id("<not a token>") is None


def test_training_is_deterministic() -> None:
    texts = _texts()
    a = train_bpe(texts, 400).to_str()
    b = train_bpe(list(reversed(texts)), 400).to_str()
    assert a == b
    with pytest.raises(ValueError, match="too small"):
        train_bpe(texts, 100)


def test_round_trip_arbitrary_source(tok: Tokenizer) -> None:
    for text in (_SOURCE, "", " leading space", "\n\n\t", "".join(_texts())[:3000]):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.vocab_size for i in ids)
    ids = tok.encode("a<|im_end|>b<think>")
    assert tok.token_to_id("<|im_end|>") in ids and tok.token_to_id("<think>") in ids
    assert tok.decode(ids) == "a<|im_end|>b<think>"
    assert tok.decode(ids, skip_special_tokens=True) == "ab"
    with pytest.raises(ValueError):
        tok.encode(None)  # type: ignore[arg-type]


def test_save_and_load(tok: Tokenizer, saved: str) -> None:
    with open(os.path.join(saved, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert cfg["bos_token"] is None and cfg["eos_token"] == cfg["pad_token"] == "<|endoftext|>"
    assert cfg["chat_template"] == CHAT_TEMPLATE and isinstance(cfg["model_max_length"], int)
    assert cfg["added_tokens_decoder"]["2"] == {"content": "<|im_end|>", "lstrip": False, "normalized": False,
                                                "rstrip": False, "single_word": False, "special": True}
    loaded = Tokenizer.from_pretrained(saved)
    assert loaded.encode(_SOURCE) == tok.encode(_SOURCE)
    assert loaded.config_dict() == tok.config_dict()
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_pretrained(os.path.join(saved, "missing"))


def test_chat_template_basic(tok: Tokenizer) -> None:
    msgs = CONVERSATIONS["system"]
    body = ("<|im_start|>system\nYou are MiMo.<|im_end|><|im_start|>user\nhi<|im_end|>"
            "<|im_start|>assistant\n<think></think>Hello!<|im_end|><|im_start|>user\n再见 👋<|im_end|>")
    assert tok.apply_chat_template(msgs) == body + "<|im_start|>assistant\n<think></think>"
    assert tok.apply_chat_template(msgs, enable_thinking=True) == body + "<|im_start|>assistant\n"
    assert tok.apply_chat_template(msgs, add_generation_prompt=False) == body
    ids = tok.apply_chat_template(msgs, tokenize=True)
    assert ids == tok.encode(tok.apply_chat_template(msgs)) and ids[0] == tok.token_to_id("<|im_start|>")


def test_chat_template_reasoning_and_tools(tok: Tokenizer) -> None:
    text = tok.apply_chat_template(CONVERSATIONS["agent"][1:], add_generation_prompt=False)
    assert text == (
        "<|im_start|>system\nYou are MiMo, a helpful AI assistant engineered by Xiaomi.<|im_end|>"
        "<|im_start|>user\nList files, twice.<|im_end|>"
        "<|im_start|>assistant\n<think>Use the run tool.</think>Sure."
        "<tool_call>\n<function=run>\n<parameter=cmd>ls -l</parameter>\n</function>\n</tool_call>"
        "<tool_call>\n<function=run>\n<parameter=cmd>ls</parameter>\n<parameter=n>2</parameter>\n"
        '<parameter=o>[1, "é"]</parameter>\n</function>\n</tool_call><|im_end|>'
        "<|im_start|>tool\n<tool_response>\na.py\n</tool_response>\n<tool_response>\nb.py\n</tool_response>\n"
        "<|im_end|>"
        "<|im_start|>assistant\n<think>\nBoth ran.\n</think>Done.<|im_end|>"
        "<|im_start|>user\nthanks<|im_end|>"
    )
    # OpenAI sends arguments as a JSON string; content may be missing when there are tool calls.
    as_json = [{"role": "user", "content": "go"},
               {"role": "assistant", "tool_calls": [_tool_call("run", '{"cmd": "pwd"}')]}]
    as_dict = [as_json[0], {"role": "assistant", "content": None, "tool_calls": [_tool_call("run", {"cmd": "pwd"})]}]
    assert tok.apply_chat_template(as_json) == tok.apply_chat_template(as_dict)
    assert "<|im_start|>assistant\n<think></think><tool_call>\n<function=run>" in tok.apply_chat_template(as_json)
    assert isinstance(as_json[1]["tool_calls"][0]["function"]["arguments"], str)  # caller's messages untouched


def test_tools_in_system_turn(tok: Tokenizer) -> None:
    user = [{"role": "user", "content": "hi"}]
    fresh = tok.apply_chat_template(user, tools=_TOOLS)
    assert fresh.startswith("<|im_start|>system\nYou are MiMo, a helpful AI assistant engineered by Xiaomi.\n\n# Tools\n\n")
    assert "<function>\n<name>run</name>\n<description>Run a <shell> command</description>\n<parameters>\n" in fresh
    assert '<required>["cmd"]</required>\n</parameters>\n</function>\n</tools>' in fresh
    assert "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>value_1</parameter>" in fresh
    assert fresh.count("<|im_start|>system") == 1 and fresh.endswith("<|im_start|>user\nhi<|im_end|>"
                                                                      "<|im_start|>assistant\n<think></think>")
    merged = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, *user], tools=_TOOLS)
    assert merged == fresh.replace("You are MiMo, a helpful AI assistant engineered by Xiaomi.", "Be brief.", 1)
    assert tok.apply_chat_template(user, tools=[]) == tok.apply_chat_template(user)


@pytest.mark.parametrize("bad, match", [
    ({"role": "user", "content": "x"}, "must be a list"),
    ([{"role": "robot", "content": "x"}], "unknown role 'robot'"),
    ([{"content": "x"}], "unknown role None"),
    ([{"role": "user"}], "has no content"),
    ([{"role": "user", "content": None}], "has no content"),
    (["hello"], "must be a dict"),
    ([{"role": "user", "content": 3}], "content must be a string"),
    ([{"role": "assistant", "content": "", "tool_calls": [_tool_call("f", "{oops")]}], "not valid JSON"),
    ([{"role": "assistant", "content": "", "tool_calls": [_tool_call("f", "[1]")]}], "JSON object"),
    ([{"role": "user", "content": "x", "tool_calls": [_tool_call("f", {})]}], "only assistant"),
])
def test_bad_messages(tok: Tokenizer, bad: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tok.apply_chat_template(bad)  # type: ignore[arg-type]


def test_bad_tools(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="tools must be a list"):
        tok.apply_chat_template([{"role": "user", "content": "x"}], tools="run")  # type: ignore[arg-type]


def test_same_text_as_transformers(tok: Tokenizer, saved: str) -> None:
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(saved)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(saved, "tokenizer.json"), chat_template=CHAT_TEMPLATE,
        eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    assert auto.encode(_SOURCE, add_special_tokens=False) == tok.encode(_SOURCE)
    assert auto.eos_token_id == tok.eos_token_id and len(auto) == tok.vocab_size
    for name, msgs in CONVERSATIONS.items():
        for tools in (None, _TOOLS):
            for thinking in (False, True):
                for gen in (False, True):
                    ours = tok.apply_chat_template(msgs, tools=tools, add_generation_prompt=gen,
                                                   enable_thinking=thinking)
                    for hf in (auto, fast):
                        theirs = hf.apply_chat_template(msgs, tools=tools, add_generation_prompt=gen,
                                                        enable_thinking=thinking, tokenize=False)
                        assert theirs == ours, (name, tools is not None, thinking, gen)
    # Without enable_thinking transformers must still get the released default: thinking off.
    msgs = CONVERSATIONS["plain"]
    assert auto.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == tok.apply_chat_template(msgs)


def test_incremental_detokenizer(tok: Tokenizer) -> None:
    text = "print('你好，世界 🐍🚀 naïve') <|im_end|>\n"
    ids = tok.encode(text)
    # With a 400-token vocabulary every CJK char and emoji spans several byte tokens.
    assert len(ids) > len(text)
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.add(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas  # some tokens only held back bytes
    assert "".join(deltas) == detok.text == text == tok.decode(ids)
    assert detok.flush() == "" and detok.token_ids == ids
    skip = IncrementalDetokenizer(tok, skip_special_tokens=True)
    assert skip.add_many(ids) == tok.decode(ids, skip_special_tokens=True) == text.replace("<|im_end|>", "")
    # A stream cut mid-character: nothing is emitted until the end, then one replacement char.
    emoji = tok.encode("🐍")
    cut = IncrementalDetokenizer(tok)
    assert cut.add_many(emoji[:-1]) == "" and cut.text == ""
    assert cut.flush() == "\ufffd"


def test_split_digits_spells_a_number_the_same_everywhere(tmp_path):
    """Without split_digits a number is one pre-token with the space before it, so a value in a sentence and the
    same value in a tool call's XML are different tokens; with it every digit is its own token in both, the text
    still round-trips, and a saved tokenizer keeps the rule."""
    texts = _texts() + ["year = 2013\nx = 2048 + 17\n<parameter=year>2013</parameter>\n"] * 50
    plain = Tokenizer(train_bpe(texts, 400))
    split = Tokenizer(train_bpe(texts, 400, split_digits=True))

    def digits(tok: Tokenizer, s: str) -> list[str]:
        return [tok.decode([i]) for i in tok.encode(s) if any(c.isdigit() for c in tok.decode([i]))]

    assert digits(plain, "year = 2013") != digits(plain, ">2013<")  # the problem
    assert digits(split, "year = 2013") == digits(split, ">2013<") == ["2", "0", "1", "3"]
    assert split.decode(split.encode(_SOURCE + " 2013 x9")) == _SOURCE + " 2013 x9"
    split.save_pretrained(str(tmp_path))
    again = Tokenizer.from_pretrained(str(tmp_path))
    assert again.encode("year = 2013; >2013<") == split.encode("year = 2013; >2013<")
