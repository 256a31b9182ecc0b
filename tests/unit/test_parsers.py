"""Output parsers: reasoning split, the release's XML tool calls, and streamed == whole-text parsing."""

import json
import random
import re

import pytest

from mimo.server.parsers import (
    ReasoningParser,
    StreamingOutputParser,
    ToolSchemas,
    convert_param_value,
    extract,
    finish_reason,
    parse_tool_call_body,
    prompt_opens_reasoning,
    split_reasoning,
)
from mimo.server.reasoning import partial_tag_len

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "metric": {"type": "boolean"},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "run_sql",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    "params": {"type": "array"},
                    "options": {"type": "object"},
                    "limit": {"type": ["integer", "null"]},
                    "ratio": {"type": "number"},
                },
            },
        },
    },
    {"type": "function", "function": {"name": "noop"}},  # no parameters schema at all
]


def call_xml(name: str, params: dict[str, str], inline: bool = True) -> str:
    """A call in the release's format (``inline``), or Qwen3-Coder's newline-padded one."""
    body = "".join(
        f"<parameter={k}>{v}</parameter>\n" if inline else f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items()
    )
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def args_of(call: dict) -> dict:
    return json.loads(call["function"]["arguments"])


# ------------------------------------------------------------------------------------------- reasoning


@pytest.mark.parametrize(
    ("text", "starts", "reasoning", "content"),
    [
        ("<think>\nplan\n</think>\n\nanswer", False, "plan", "answer"),
        ("plain answer", False, None, "plain answer"),
        ("plan\n</think>\n\nanswer", True, "plan", "answer"),  # prompt ended with "<think>\n"
        ("\nplan\n</think>\n\nanswer", True, "plan", "answer"),  # prompt ended with "<think>"
        ("<think>\nstill thinking", False, "still thinking", None),  # unterminated: all reasoning
        ("still thinking\n", True, "still thinking", None),
        ("<think>\n\n</think>\n\nanswer", False, None, "answer"),  # non-thinking stub
        ("<think></think>answer", False, None, "answer"),
        # only line breaks at the ends of each channel are stripped; spaces and inner breaks stay
        ("<think>\n  a\n\nb  \n</think>\n\n  x\n\ny\n", False, "  a\n\nb  ", "  x\n\ny"),
        ("<think>\r\nplan\r\n</think>\r\n\r\nanswer", False, "plan", "answer"),
        # stray closing tag in content and nested opening tag in reasoning are literal text
        ("a </think> b", False, None, "a </think> b"),
        ("<think>x <think> y</think>z", False, "x <think> y", "z"),
        # several blocks are concatenated; text before the first block is content
        ("pre<think>r1</think>mid<think>r2</think>post", False, "r1r2", "premidpost"),
        ("answer <thin", False, None, "answer <thin"),  # incomplete tag at the end is text
        ("", False, None, None),
    ],
)
def test_split_reasoning(text, starts, reasoning, content):
    assert split_reasoning(text, starts_in_reasoning=starts) == (reasoning, content)


def test_reasoning_parser_handles_tags_split_across_deltas():
    p = ReasoningParser()
    assert p.feed("<th") == ("", "")
    assert p.feed("ink>\nab") == ("ab", "")
    assert p.feed("c\n</thi") == ("c", "")  # the "\n" is held: it may be the last of the reasoning
    assert p.feed("nk>\n") == ("", "")
    assert p.feed("\nHel") == ("", "Hel")
    assert p.feed("lo <") == ("", "lo ")  # "<" might start a tag
    assert p.feed("b>") == ("", "<b>")
    assert p.flush() == ("", "")
    assert p.flush() == ("", "")
    with pytest.raises(RuntimeError):
        p.feed("x")


def test_reasoning_parser_starts_in_reasoning_and_flushes_partial_tag():
    p = ReasoningParser(starts_in_reasoning=True)
    assert p.in_reasoning
    assert p.feed("deep thought </th") == ("deep thought ", "")
    assert p.flush() == ("</th", "")


def test_prompt_opens_reasoning():
    assert prompt_opens_reasoning("<|im_start|>assistant\n<think>\n")
    assert prompt_opens_reasoning("<|im_start|>assistant\n<think>")
    assert not prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not prompt_opens_reasoning("<|im_start|>assistant\n")


def test_partial_tag_len():
    assert partial_tag_len("abc<", ["<think>"]) == 1
    assert partial_tag_len("abc<thin", ["<think>"]) == 5
    assert partial_tag_len("abc<think>", ["<think>"]) == 0  # complete tags are not partial
    assert partial_tag_len("x</tool_c", ["<think>", "</tool_call>"]) == 8
    assert partial_tag_len("", ["<think>"]) == 0


# ------------------------------------------------------------------------------------ value conversion


@pytest.mark.parametrize(
    ("raw", "schema", "expected"),
    [
        ("Paris", {"type": "string"}, "Paris"),
        ("42", {"type": "string"}, "42"),  # a string stays a string
        (" two spaces ", {"type": "string"}, " two spaces "),
        ("null", {"type": "string"}, "null"),
        ("42", {"type": "integer"}, 42),
        (" -7 ", {"type": "integer"}, -7),
        ("3.0", {"type": "integer"}, 3),
        ("3.5", {"type": "integer"}, 3.5),  # not an integer: JSON fallback
        ("many", {"type": "integer"}, "many"),  # not a number: raw string
        ("1_000", {"type": "integer"}, "1_000"),
        ("2.5", {"type": "number"}, 2.5),
        ("3", {"type": "number"}, 3),
        ("1e3", {"type": "number"}, 1000.0),
        ("NaN", {"type": "number"}, "NaN"),  # NaN is not JSON
        ("inf", {"type": "number"}, "inf"),
        ("true", {"type": "boolean"}, True),
        ("False", {"type": "boolean"}, False),
        ("yes", {"type": "boolean"}, "yes"),
        ("null", {"type": "null"}, None),
        ('{"a": [1, 2]}', {"type": "object"}, {"a": [1, 2]}),
        ("{'a': True}", {"type": "object"}, {"a": True}),  # Python literal
        ("{broken", {"type": "object"}, "{broken"),
        ("[1, 2]", {"type": "object"}, [1, 2]),  # parses, wrong kind: JSON fallback
        ("[1, 'x']", {"type": "array"}, [1, "x"]),
        ("not a list", {"type": "array"}, "not a list"),
        ("null", {"type": ["integer", "null"]}, None),
        ("5", {"type": ["integer", "null"]}, 5),
        ("5", {"type": ["string", "integer"]}, 5),  # non-string types are tried first
        ("five", {"type": ["string", "integer"]}, "five"),
        ("7", {"anyOf": [{"type": "integer"}, {"type": "string"}]}, 7),
        ("1", {"enum": ["1", "2"]}, "1"),  # enum of strings: a string
        ("1", {"enum": [1, 2]}, 1),
        ("8", {"type": "int"}, 8),  # Python spelling
        ("12", None, 12),  # no schema: JSON, then the raw string
        ("hello", None, "hello"),
        ('"quoted"', None, "quoted"),
        ("[1, 2]", {}, [1, 2]),
        ("NaN", None, "NaN"),
        ("[" * 5000, {"type": "array"}, "[" * 5000),  # deep garbage must not raise
    ],
)
def test_convert_param_value(raw, schema, expected):
    got = convert_param_value(raw, schema)
    assert got == expected and type(got) is type(expected)


# ------------------------------------------------------------------------------------- tool-call blocks


def test_parse_tool_call_body_keeps_values_verbatim():
    """String values are the exact text between the tags (the release's promise); typed ones are trimmed."""
    schemas = ToolSchemas(TOOLS)
    body = "\n<function=get_weather>\n<parameter=city>\n\nNew York\n\n</parameter>\n<parameter=days>\n3\n</parameter>\n"
    name, arguments = parse_tool_call_body(body + "</function>\n", schemas)
    assert name == "get_weather"
    assert json.loads(arguments) == {"city": "\n\nNew York\n\n", "days": 3}
    # A file written by a tool keeps its final newline and its indentation; entities stay as written.
    body = "<function=run_sql>\n<parameter=query>  SELECT 1 &amp; 2;\n</parameter>\n<parameter=limit>null</parameter>\n"
    assert json.loads(parse_tool_call_body(body, schemas)[1]) == {"query": "  SELECT 1 &amp; 2;\n", "limit": None}
    # null is JSON null only where the schema allows it; a string parameter gets the text.
    body = "<function=get_weather>\n<parameter=city>null</parameter>\n</function>"
    assert json.loads(parse_tool_call_body(body, schemas)[1]) == {"city": "null"}


@pytest.mark.parametrize(
    "body",
    [
        "<function=unknown>\n</function>",  # not in tools
        "garbage",
        "<function=get_weather>\n<parameter=city>\nParis\n</function>",  # unclosed parameter
        "<function=get_weather>\n<parameter=city\nParis</parameter>\n</function>",
        "<function=get_weather>\nstray text\n</function>",
        "<function=get_weather>\n</function>\ntrailing",
        "<function=get_weather",
        "",
    ],
)
def test_parse_tool_call_body_rejects_malformed(body):
    assert parse_tool_call_body(body, ToolSchemas(TOOLS)) is None


def test_tool_schemas_accepts_models_and_skips_junk():
    class Model:  # anything with model_dump(), like the protocol's ChatTool
        def model_dump(self):
            return {"type": "function", "function": {"name": "m", "parameters": {"properties": {"x": {"type": "string"}}}}}

    schemas = ToolSchemas([Model(), {"function": "nope"}, "junk", {"function": {"name": ""}}])
    assert schemas.names() == ["m"]
    assert schemas.param_schema("m", "x") == {"type": "string"}
    assert not ToolSchemas(None)


# ---------------------------------------------------------------------------------------------- extract


def test_extract_content_and_multiple_tool_calls():
    text = (
        "Checking both.\n"
        + call_xml("get_weather", {"city": "Paris", "days": "3", "metric": "true"})
        + "\n"
        + call_xml("run_sql", {"query": "SELECT 1", "params": "[1, 2]", "limit": "null", "ratio": "0.5"}, inline=True)
    )
    out = extract(text, TOOLS)
    assert out.content == "Checking both."
    assert out.reasoning is None
    assert [c["function"]["name"] for c in out.tool_calls] == ["get_weather", "run_sql"]
    assert args_of(out.tool_calls[0]) == {"city": "Paris", "days": 3, "metric": True}
    assert args_of(out.tool_calls[1]) == {"query": "SELECT 1", "params": [1, 2], "limit": None, "ratio": 0.5}
    for call in out.tool_calls:
        assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"]) and call["type"] == "function"
    assert out.tool_calls[0]["id"] != out.tool_calls[1]["id"]
    assert finish_reason("stop", bool(out.tool_calls)) == "tool_calls"


def test_extract_tool_call_inside_reasoning_is_a_tool_call():
    # MiMo-V2-Flash issue #23: the call is written inside <think>; it must not vanish into reasoning_content.
    text = "<think>\nI need the weather.\n" + call_xml("get_weather", {"city": "Oslo"}) + "\n</think>\n\n"
    out = extract(text, TOOLS)
    assert out.reasoning == "I need the weather."
    assert out.content is None
    assert [args_of(c) for c in out.tool_calls] == [{"city": "Oslo"}]
    # same with the opening tag in the prompt, and calls on both sides of </think>, numbered in text order
    text = "hmm\n" + call_xml("noop", {}) + "\n</think>\n\nok\n" + call_xml("get_weather", {"city": "Rome"})
    out = extract(text, TOOLS, starts_in_reasoning=True)
    assert (out.reasoning, out.content) == ("hmm", "ok")
    assert [c["function"]["name"] for c in out.tool_calls] == ["noop", "get_weather"]
    assert args_of(out.tool_calls[0]) == {}


def test_extract_no_schema_and_unknown_parameter_use_json_then_string():
    out = extract(call_xml("noop", {"a": "12", "b": "hello", "c": '{"k": 1}'}), TOOLS)
    assert args_of(out.tool_calls[0]) == {"a": 12, "b": "hello", "c": {"k": 1}}
    out = extract(call_xml("get_weather", {"city": "12", "zoom": "3"}), TOOLS)
    assert args_of(out.tool_calls[0]) == {"city": "12", "zoom": 3}


def test_extract_missing_function_close_is_tolerated():
    out = extract("<tool_call>\n<function=get_weather>\n<parameter=city>Lima</parameter>\n</tool_call>", TOOLS)
    assert args_of(out.tool_calls[0]) == {"city": "Lima"}


@pytest.mark.parametrize(
    "text",
    [
        call_xml("rm_rf", {"path": "/"}),  # unknown function
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n",  # unclosed tool_call
        "<tool_call>\nnot xml at all\n</tool_call>",
        "<tool_call>",
        "text </tool_call> more",  # stray closing tag
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</function>\n</tool_call>",
    ],
)
def test_extract_malformed_tool_call_is_content_verbatim(text):
    out = extract(text, TOOLS)
    assert out.tool_calls == []
    assert out.content == text.strip("\n")
    assert finish_reason("stop", False) == "stop"


def test_extract_nested_tool_call_start_recovers_the_second_call():
    text = "<tool_call>\n<function=get_weather>\n" + call_xml("get_weather", {"city": "Kyiv"})
    out = extract(text, TOOLS)
    assert out.content == "<tool_call>\n<function=get_weather>"
    assert [args_of(c) for c in out.tool_calls] == [{"city": "Kyiv"}]


def test_extract_unclosed_tool_call_in_reasoning_ends_at_think_close():
    text = "<think>\nmaybe <tool_call>\n<function=get_weather>\n</think>\n\nNo tool needed."
    out = extract(text, TOOLS)
    assert out.reasoning == "maybe <tool_call>\n<function=get_weather>"
    assert out.content == "No tool needed."
    assert out.tool_calls == []
    # streamed, </think> ends the open block at once: the answer is not held back until the end
    p = StreamingOutputParser(TOOLS)
    assert p.feed(text) == [{"reasoning_content": out.reasoning}, {"content": out.content}]


def test_extract_without_tools_is_the_plain_reasoning_split():
    text = "<think>\nx " + call_xml("get_weather", {"city": "Oslo"}) + "\n</think>\n\ny"
    out = extract(text, None)
    assert out.tool_calls == []
    assert (out.reasoning, out.content) == split_reasoning(text)


def test_finish_reason():
    assert finish_reason(None, True) is None
    assert finish_reason("length", False) == "length"
    assert finish_reason("length", True) == "tool_calls"


# ------------------------------------------------------------------------------------------- streaming


def test_streaming_deltas_shape_and_hold_back():
    p = StreamingOutputParser(TOOLS, starts_in_reasoning=True)
    assert p.feed("plan\n</th") == [{"reasoning_content": "plan"}]
    assert p.feed("ink>\n\nCalling <tool") == [{"content": "Calling "}]
    call = call_xml("get_weather", {"city": "Oslo", "days": "2"})[len("<tool") :]
    assert p.feed(call[:-3]) == []  # the block is held until </tool_call>
    deltas = p.feed(call[-3:] + " done")
    header, arguments, tail = deltas
    tc = header["tool_calls"][0]
    assert tc["index"] == 0 and tc["type"] == "function" and tc["id"].startswith("call_")
    assert tc["function"] == {"name": "get_weather", "arguments": ""}
    assert arguments == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Oslo", "days": 2}'}}]}
    assert tail == {"content": " done"}
    assert p.has_tool_calls and p.tool_calls[0]["id"] == tc["id"]
    assert p.finish() == [] and p.finish() == []
    with pytest.raises(RuntimeError):
        p.feed("x")


def test_streaming_unclosed_tool_call_is_flushed_as_content():
    p = StreamingOutputParser(TOOLS)
    text = "Sure.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nPa"
    assert p.feed(text) == [{"content": "Sure."}]
    assert p.finish() == [{"content": text[len("Sure.") :]}]
    assert not p.has_tool_calls


def join_stream(text: str, cuts: list[int], tools, starts: bool):
    """Feed text split at cuts; check the deltas' shape; return (content, reasoning, [(name, arguments)]).

    Also checks that nothing is held back needlessly: once a prefix is fed, every call complete in it has
    been emitted (checked at a few cuts and wherever the prefix ends with </tool_call>).
    """
    p = StreamingOutputParser(tools, starts)
    deltas = []
    bounds = [0, *cuts, len(text)]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        deltas += p.feed(text[a:b])
        if i < 12 or text[:b].endswith("</tool_call>"):
            assert len(p.tool_calls) == len(extract(text[:b], tools, starts).tool_calls), (text, b)
    deltas += p.finish()
    content, reasoning, calls = [], [], []
    for d in deltas:
        assert len(d) == 1
        key, value = next(iter(d.items()))
        if key == "tool_calls":
            (tc,) = value
            if "id" in tc:
                assert tc["index"] == len(calls) and tc["function"]["arguments"] == ""
                calls.append([tc["function"]["name"], ""])
            else:
                assert tc["index"] == len(calls) - 1 and set(tc) == {"index", "function"}
                calls[-1][1] += tc["function"]["arguments"]
        else:
            assert value, "no empty text deltas"
            (content if key == "content" else reasoning).append(value)
    assert [c["function"]["name"] for c in p.tool_calls] == [name for name, _ in calls]
    return "".join(content) or None, "".join(reasoning) or None, [tuple(c) for c in calls]


def summary(out):
    return out.content, out.reasoning, [(c["function"]["name"], c["function"]["arguments"]) for c in out.tool_calls]


WORDS = ["the", "answer", "is", "42", "<", "<th", "</thi", "<tool", "</tool_c", "a<b", "x>y", "think", "漢字",
         "é", "{", "}", "<function=f>", "<parameter=p>", "</parameter>", "\n", "\n\n", "  ", "\t"]  # fmt: skip


def words(rng: random.Random, lo: int = 1, hi: int = 8) -> str:
    # Joined by spaces, these never form a complete tag.
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def random_call(rng: random.Random) -> tuple[str, str, dict]:
    """(xml, name, expected arguments) for a valid call with values of every schema type."""
    name = rng.choice(["get_weather", "run_sql", "noop"])
    params: dict[str, tuple[str, object]] = {}
    if name == "get_weather":
        city = rng.choice(["Paris", "New\nYork", "São Paulo <3", "42", "  spaced  "])
        params["city"] = (city, city)
        if rng.random() < 0.5:
            d = rng.randint(-3, 30)
            params["days"] = (str(d), d)
        if rng.random() < 0.5:
            b = rng.random() < 0.5
            params["metric"] = (rng.choice(["true", "True"]) if b else "false", b)
    elif name == "run_sql":
        params["query"] = ("SELECT *\nFROM t WHERE a < 3", "SELECT *\nFROM t WHERE a < 3")
        if rng.random() < 0.5:
            params["params"] = ('[1, "two", null]', [1, "two", None])
        if rng.random() < 0.5:
            params["options"] = rng.choice([('{"timeout": 5}', {"timeout": 5}), ("{'x': [1]}", {"x": [1]})])
        if rng.random() < 0.5:
            params["limit"] = rng.choice([("null", None), ("10", 10)])
        if rng.random() < 0.5:
            params["ratio"] = ("0.25", 0.25)
    else:
        for k in rng.sample(["a", "b", "c"], rng.randint(0, 2)):
            params[k] = rng.choice([("7", 7), ("hi there", "hi there"), ('{"k": [true]}', {"k": [True]})])
    sep = rng.choice(["\n", "", "  \n"])
    body, expected = "", {}
    for k, (raw, value) in params.items():
        # Mostly the release's inline form; sometimes Qwen3-Coder's padding, which a string value keeps.
        padded = rng.random() < 0.3
        body += f"<parameter={k}>\n{raw}\n</parameter>{sep}" if padded else f"<parameter={k}>{raw}</parameter>{sep}"
        expected[k] = f"\n{value}\n" if padded and isinstance(value, str) else value
    close = rng.choice(["</function>\n", "</function>", ""])  # a missing </function> is tolerated
    xml = f"<tool_call>{sep}<function={name}>{sep}{body}{close}</tool_call>"
    return xml, name, expected


def random_output(rng: random.Random):
    """A well-formed output and what it must parse to: (text, starts_in_reasoning, reasoning, content, calls)."""
    text, reasoning, content, calls = "", [], [], []
    starts = rng.random() < 0.3
    n_calls = rng.randint(0, 3)

    def segment(parts: list[str]) -> None:
        nonlocal text, n_calls
        piece = words(rng, 0, 8)
        text += piece
        parts.append(piece)
        if n_calls and rng.random() < 0.5:
            xml, name, args = random_call(rng)
            before, after = rng.choice(["", "\n"]), rng.choice(["", "\n", " "])
            text += before + xml + after
            parts += [before, after]  # text around a call stays in its channel
            calls.append((name, args))
            n_calls -= 1

    if starts or rng.random() < 0.6:
        if not starts:
            text += "<think>" + rng.choice(["\n", ""])
        for _ in range(rng.randint(1, 3)):
            segment(reasoning)
        if rng.random() < 0.85:
            text += rng.choice(["\n</think>\n\n", "</think>", "\n</think>"])
        else:  # unterminated think block: everything after is reasoning
            for _ in range(rng.randint(0, 2)):
                segment(reasoning)
            return text, starts, reasoning, None, calls
    for _ in range(rng.randint(1, 3)):
        segment(content)
    return text, starts, reasoning, content, calls


def check_split_invariance(rng: random.Random, text: str, starts: bool, tools) -> tuple:
    whole = summary(extract(text, tools, starts))
    splits = [list(range(1, len(text)))] if len(text) < 400 else []  # one char per delta
    for _ in range(4):
        splits.append(sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12)))) if text else [])
    for cuts in splits:
        assert join_stream(text, cuts, tools, starts) == whole, (text, cuts)
    return whole


def test_streaming_equals_whole_text_on_random_outputs():
    rng = random.Random(1234)
    for _ in range(250):
        text, starts, reasoning, content, calls = random_output(rng)
        got_content, got_reasoning, got_calls = check_split_invariance(rng, text, starts, TOOLS)
        # ... and the whole-text parse is the intended one
        assert got_reasoning == ("".join(reasoning).strip("\r\n") or None), text
        assert got_content == ("".join(content or []).strip("\r\n") or None), text
        assert [(n, json.loads(a)) for n, a in got_calls] == calls, text
        for _, arguments in got_calls:
            json.loads(arguments, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_streaming_equals_whole_text_on_truncated_and_corrupted_outputs():
    rng = random.Random(99)
    fragments = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<function=get_weather>", "<function=nope>",
                 "<parameter=city>", "</parameter>", "</function>", "\n", "Oslo", "<", "<tool_", "</th", " "]  # fmt: skip
    for i in range(300):
        text, starts, *_ = random_output(rng)
        if i % 3 == 0:  # every prefix of a valid output is a possible max_tokens cut
            text = text[: rng.randint(0, len(text))]
        elif i % 3 == 1:  # insert a random fragment somewhere
            at = rng.randint(0, len(text))
            text = text[:at] + rng.choice(fragments) + text[at:]
        else:  # pure tag soup
            text = "".join(rng.choice(fragments) for _ in range(rng.randint(0, 30)))
        check_split_invariance(rng, text, starts, TOOLS)
        # with tool parsing off, the streaming parser is the reasoning parser
        no_tools = check_split_invariance(rng, text, starts, None)
        assert no_tools[:2][::-1] == split_reasoning(text, starts) and no_tools[2] == []
        reasoning_parser = ReasoningParser(starts)
        pieces = [reasoning_parser.feed(ch) for ch in text] + [reasoning_parser.flush()]
        joined = ("".join(r for r, _ in pieces) or None, "".join(c for _, c in pieces) or None)
        assert joined == split_reasoning(text, starts)


def test_streaming_long_tool_call_value_is_linear():
    # A tool call writing a large file arrives in many small deltas; scanning must not restart each time.
    value = "line of code < > </ <tool\n" * 4000
    text = call_xml("run_sql", {"query": value})
    p = StreamingOutputParser(TOOLS)
    deltas = []
    for i in range(0, len(text), 3):
        deltas += p.feed(text[i : i + 3])
    deltas += p.finish()
    assert len(deltas) == 2 and json.loads(p.tool_calls[0]["function"]["arguments"]) == {"query": value}
