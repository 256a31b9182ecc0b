"""Constrained decoding through the OpenAI API, with the official client: tool_choice "required" and a named tool
force a call to an offered tool whose arguments validate (even from a random model), response_format holds the
reply to its JSON schema, and bad formats are 400s. Without constrained decoding these stay requests."""

import json

import openai
import pytest
import torch

from mimo.engine.engine import Engine
from mimo.posttrain.domains.tools import validate
from mimo.server.app import ServerConfig, build_app
from mimo.server.async_engine import AsyncEngine
from tests.helpers import random_model, tiny_config
from tests.server.conftest import API_KEY, MODEL, run_server

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                                               "metric": {"type": "boolean"}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "get_time", "description": "The time in a zone",
                                           "parameters": {"type": "object", "properties": {
                                               "zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
PERSON = {"type": "object", "properties": {"name": {"enum": ["ann", "bo"]}, "ok": {"type": "boolean"}},
          "required": ["name", "ok"], "additionalProperties": False}
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def cclient(tokenizer):
    """A server that constrains decoding, over a random model with room for the tool list's system prompt."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = random_model(tiny_config(vocab_size=tokenizer.vocab_size, eos_token_id=0), seed=5)
    aengine = AsyncEngine(Engine(model, tokenizer, max_num_seqs=8, max_model_len=2048, num_speculative_tokens=2))
    app = build_app(aengine, tokenizer, MODEL, api_key=API_KEY, config=ServerConfig(constrained_decoding=True))
    try:
        with run_server(app) as url:
            yield openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    finally:
        aengine.close()
        torch.set_num_threads(threads)


@pytest.mark.parametrize("stream", [False, True])
def test_required_tool_choice_gives_a_valid_call(cclient, stream):
    for seed in range(3):
        kw = dict(model=MODEL, messages=MSG, tools=TOOLS, tool_choice="required", max_tokens=200, seed=seed,
                  parallel_tool_calls=False,
                  temperature=1.0)
        if stream:
            calls: dict[int, dict] = {}
            reason = None
            for chunk in cclient.chat.completions.create(stream=True, **kw):
                for c in chunk.choices:
                    reason = c.finish_reason or reason
                    for tc in c.delta.tool_calls or []:
                        d = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                        d["name"] += (tc.function.name or "") if tc.function else ""
                        d["arguments"] += (tc.function.arguments or "") if tc.function else ""
            assert reason == "tool_calls" and len(calls) >= 1
            got = list(calls.values())
        else:
            r = cclient.chat.completions.create(**kw)
            assert r.choices[0].finish_reason == "tool_calls", repr(r.choices[0].message.content)
            got = [{"name": t.function.name, "arguments": t.function.arguments} for t in r.choices[0].message.tool_calls]
        for call in got:
            assert call["name"] in SCHEMAS
            assert validate(json.loads(call["arguments"]), SCHEMAS[call["name"]]), call


def test_named_tool_choice_calls_that_tool(cclient):
    r = cclient.chat.completions.create(model=MODEL, messages=MSG, tools=TOOLS, max_tokens=80, seed=1,
                                        tool_choice={"type": "function", "function": {"name": "get_time"}},
                                        parallel_tool_calls=False)
    calls = r.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"]
    assert json.loads(calls[0].function.arguments)["zone"] in ("UTC", "CET")


def test_response_format_json_schema_and_json_object(cclient):
    r = cclient.chat.completions.create(model=MODEL, messages=MSG, max_tokens=60, seed=2, response_format={
        "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    assert validate(json.loads(r.choices[0].message.content), PERSON), r.choices[0].message.content
    r = cclient.chat.completions.create(model=MODEL, messages=MSG, max_tokens=200, temperature=0,
                                        response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":  # a random model may still be inside its object at max_tokens
        assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.parametrize("fmt, message", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}, "invalid json"),
    ({"type": "xml"}, "'text', 'json_object' or 'json_schema'"),
    ({"type": "json_schema", "json_schema": "nope"}, "json_schema must be an object"),
])
def test_bad_response_format_is_a_400(cclient, fmt, message):
    with pytest.raises(openai.BadRequestError, match=message):
        cclient.chat.completions.create(model=MODEL, messages=MSG, max_tokens=4, response_format=fmt)


def test_without_constrained_decoding_response_format_is_a_request_only(client):
    r = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=4, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}})
    assert r.choices[0].finish_reason in ("stop", "length")
