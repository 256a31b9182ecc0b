"""mimo's chat template against the release family's format, byte for byte.

The five ``RELEASE_RENDERS`` are the reference renders of the MiMo release family's own template
(transformers' ``apply_chat_template`` on a public transcription of it; shared/docs/release-chat-format.md).
The other cases follow the same template's rules (consecutive tool results share one ``tool`` turn,
reasoning kept for every assistant turn, a later system message is its own turn, ...).
"""

from __future__ import annotations

import json
import os

import pytest

from mimo.chat_format import CHAT_TEMPLATE, render_chat_template
from mimo.server.parsers import extract

DEFAULT_SYSTEM = "<|im_start|>system\nYou are MiMo, a helpful AI assistant engineered by Xiaomi.<|im_end|>"

WEATHER_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "days": {"type": "integer", "description": "Forecast days"},
        "metric": {"type": "boolean"},
        "opts": {"type": "object"}}, "required": ["city"]}}}]

TOOLS_SYSTEM = (
    "<|im_start|>system\nYou are MiMo, a helpful AI assistant engineered by Xiaomi.\n\n# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You have access to the following functions:\n\n<tools>\n<function>\n<name>get_weather</name>\n"
    "<description>Get the weather for a city.</description>\n<parameters>\n"
    "<parameter>\n<name>city</name>\n<type>string</type>\n<description>City name</description>\n</parameter>\n"
    "<parameter>\n<name>days</name>\n<type>integer</type>\n<description>Forecast days</description>\n</parameter>\n"
    "<parameter>\n<name>metric</name>\n<type>boolean</type>\n</parameter>\n"
    "<parameter>\n<name>opts</name>\n<type>object</type>\n</parameter>\n"
    '<required>["city"]</required>\n</parameters>\n</function>\n</tools>\n\n'
    "For each function call, output the function name and arguments in the following format:\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>value_1</parameter>\n"
    "<parameter=example_parameter_2>This is the value for the second parameter\nthat can span\nmultiple lines"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\n"
    "- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested "
    "within <tool_call></tool_call> XML tags\n"
    "- DO NOT use function calls inside <think></think> tags.\n"
    "- The value enclosed between parameter tags is preserved exactly as-is, including newlines and spaces.\n"
    "</IMPORTANT><|im_end|>"
)

WEATHER_CALL = {"id": "call_1", "type": "function", "function": {
    "name": "get_weather", "arguments": {"city": "Paris", "days": 3, "metric": True, "opts": {"lang": "fr"}}}}
WEATHER_CALL_TEXT = ("<tool_call>\n<function=get_weather>\n<parameter=city>Paris</parameter>\n"
                     "<parameter=days>3</parameter>\n<parameter=metric>True</parameter>\n"
                     '<parameter=opts>{"lang": "fr"}</parameter>\n</function>\n</tool_call>')

HI = [{"role": "user", "content": "Hi"}]

# (name, messages, tools, enable_thinking, expected text with the generation prompt)
RELEASE_RENDERS = [
    ("user, thinking off", HI, None, False,
     DEFAULT_SYSTEM + "<|im_start|>user\nHi<|im_end|><|im_start|>assistant\n<think></think>"),
    ("user, thinking on", HI, None, True,
     DEFAULT_SYSTEM + "<|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"),
    ("own system, thinking off", [{"role": "system", "content": "You are MiMo."}, *HI], None, False,
     "<|im_start|>system\nYou are MiMo.<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n<think></think>"),
    ("multi-turn reasoning, thinking on",
     [{"role": "user", "content": "2+2?"},
      {"role": "assistant", "content": "4", "reasoning_content": "two plus two is four"},
      {"role": "user", "content": "and 3+3?"}], None, True,
     DEFAULT_SYSTEM + "<|im_start|>user\n2+2?<|im_end|><|im_start|>assistant\n<think>two plus two is four</think>4"
     "<|im_end|><|im_start|>user\nand 3+3?<|im_end|><|im_start|>assistant\n"),
    ("tools, call, result, thinking off",
     [{"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
      {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}], WEATHER_TOOLS, False,
     TOOLS_SYSTEM + "<|im_start|>user\nWeather in Paris?<|im_end|><|im_start|>assistant\n<think></think>"
     + WEATHER_CALL_TEXT + "<|im_end|><|im_start|>tool\n<tool_response>\n{\"temp\": 21}\n</tool_response>\n"
     "<|im_end|><|im_start|>assistant\n<think></think>"),
]

FILE = "def f():\n    return 1\n"
RULE_RENDERS = [
    ("no generation prompt is left open", HI, None, None, DEFAULT_SYSTEM + "<|im_start|>user\nHi<|im_end|>"
     "<|im_start|>assistant\n<think></think>"),
    ("two tool results share one tool turn",
     [{"role": "user", "content": "go"},
      {"role": "assistant", "content": "Both.", "tool_calls": [
          {"type": "function", "function": {"name": "run", "arguments": '{"cmd": "ls"}'}},
          {"type": "function", "function": {"name": "run", "arguments": {"cmd": "pwd", "n": None}}}]},
      {"role": "tool", "tool_call_id": "a", "content": "a.py"},
      {"role": "tool", "tool_call_id": "b", "content": "/w"}], None, False,
     DEFAULT_SYSTEM + "<|im_start|>user\ngo<|im_end|><|im_start|>assistant\n<think></think>Both."
     "<tool_call>\n<function=run>\n<parameter=cmd>ls</parameter>\n</function>\n</tool_call>"
     "<tool_call>\n<function=run>\n<parameter=cmd>pwd</parameter>\n<parameter=n>None</parameter>\n</function>\n"
     "</tool_call><|im_end|><|im_start|>tool\n<tool_response>\na.py\n</tool_response>\n<tool_response>\n/w\n"
     "</tool_response>\n<|im_end|><|im_start|>assistant\n<think></think>"),
    ("a value with newlines is written verbatim",
     [{"role": "user", "content": "save"},
      {"role": "assistant", "content": "", "tool_calls": [
          {"type": "function", "function": {"name": "write_file", "arguments": {"path": "f.py", "content": FILE}}}]}],
     None, False,
     DEFAULT_SYSTEM + "<|im_start|>user\nsave<|im_end|><|im_start|>assistant\n<think></think>"
     "<tool_call>\n<function=write_file>\n<parameter=path>f.py</parameter>\n"
     f"<parameter=content>{FILE}</parameter>\n</function>\n</tool_call><|im_end|>"
     "<|im_start|>assistant\n<think></think>"),
    ("reasoning written inside the content is split out",
     [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>hmm</think>ok"},
      {"role": "user", "content": "r"}], None, True,
     DEFAULT_SYSTEM + "<|im_start|>user\nq<|im_end|><|im_start|>assistant\n<think>hmm</think>ok<|im_end|>"
     "<|im_start|>user\nr<|im_end|><|im_start|>assistant\n"),
    ("a later system message and text parts",
     [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
      {"role": "system", "content": "Be brief."}, {"role": "user", "content": "c"}], None, False,
     DEFAULT_SYSTEM + "<|im_start|>user\nab<|im_end|><|im_start|>system\nBe brief.<|im_end|>"
     "<|im_start|>user\nc<|im_end|><|im_start|>assistant\n<think></think>"),
    ("tools with an own system message, thinking on",
     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}], WEATHER_TOOLS,
     True,
     TOOLS_SYSTEM.replace("You are MiMo, a helpful AI assistant engineered by Xiaomi.", "Be brief.")
     + "<|im_start|>user\nWeather in Paris?<|im_end|><|im_start|>assistant\n"),
]


@pytest.mark.parametrize("name, messages, tools, thinking, expected", RELEASE_RENDERS + RULE_RENDERS,
                         ids=[c[0] for c in RELEASE_RENDERS + RULE_RENDERS])
def test_renders_the_release_format(name, messages, tools, thinking, expected) -> None:
    assert render_chat_template(CHAT_TEMPLATE, messages, tools=tools, enable_thinking=thinking) == expected


def test_thinking_default_belongs_to_the_template() -> None:
    # mimo's template (MiMo-V2-Flash): off unless asked; a template whose default is on keeps it.
    assert render_chat_template(CHAT_TEMPLATE, HI).endswith("<think></think>")
    on_by_default = "{%- if enable_thinking is not defined or enable_thinking %}ON{% else %}OFF{% endif -%}"
    assert render_chat_template(on_by_default, HI) == "ON"
    assert render_chat_template(on_by_default, HI, enable_thinking=False) == "OFF"
    with pytest.raises(ValueError, match="enable_thinking must be true or false"):
        render_chat_template(CHAT_TEMPLATE, HI, enable_thinking="false")  # type: ignore[arg-type]


def test_keep_all_reasoning_false_drops_reasoning_before_the_last_user_turn() -> None:
    msgs = RELEASE_RENDERS[3][1]
    text = render_chat_template(CHAT_TEMPLATE, msgs, enable_thinking=True, keep_all_reasoning=False)
    assert "<think></think>4" in text and "two plus two" not in text


def test_the_parser_reads_back_what_the_template_writes() -> None:
    """A call rendered by the template parses back to the same arguments, string values byte for byte."""
    values = {"path": "f.py", "content": FILE, "spaces": "  two  ", "blank": "\n\n", "days": 3, "metric": True,
              "opts": {"lang": "fr", "n": [1, 2]}}
    tools = [{"type": "function", "function": {"name": "write_file", "parameters": {"type": "object", "properties": {
        "path": {"type": "string"}, "content": {"type": "string"}, "spaces": {"type": "string"},
        "blank": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
        "opts": {"type": "object"}}}}}]
    msgs = [{"role": "user", "content": "x"},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                "name": "write_file", "arguments": values}}]}]
    text = render_chat_template(CHAT_TEMPLATE, msgs, add_generation_prompt=False)
    reply = text.split("<think></think>")[-1].removesuffix("<|im_end|>")
    parsed = extract(reply, tools)
    assert parsed.content is None and len(parsed.tool_calls) == 1
    assert json.loads(parsed.tool_calls[0]["function"]["arguments"]) == values


def test_mimo_nano_ships_this_template() -> None:
    path = os.path.join(os.path.dirname(__file__), "..", "..", "models", "mimo-nano", "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        assert json.load(f)["chat_template"] == CHAT_TEMPLATE
