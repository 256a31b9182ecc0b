"""OpenAI protocol models: defaults, validation errors that name the field, and response wire shapes."""

import json

import pytest
from pydantic import ValidationError

from mimo.server.protocol import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ModelCard,
    ModelList,
    NamedToolChoice,
    ToolCall,
    UsageInfo,
    error_body,
    error_location,
    validation_error_body,
)

USER = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def chat(**kw):
    return ChatCompletionRequest(**{"messages": USER, **kw})


def first_error(model, **kw) -> tuple[str, str]:
    """(field path, message) of the first validation error."""
    with pytest.raises(ValidationError) as exc:
        model(**kw)
    err = exc.value.errors()[0]
    return error_location(err["loc"]), err["msg"]


# -------------------------------------------------------------------------------------------- requests


def test_completion_defaults_and_extras_ignored():
    r = CompletionRequest(model="mimo", prompt="Hello", best_of=3, suffix="x", some_vendor_field={"a": 1})
    assert r.max_tokens == 16 and r.n == 1 and not r.stream and not r.echo and r.logprobs is None
    assert r.temperature is None and r.top_p is None  # the server applies its own defaults
    assert r.stop_strings() == [] and not r.include_usage
    assert not hasattr(r, "best_of")


@pytest.mark.parametrize(
    ("prompt", "batch"),
    [
        ("Hello", ["Hello"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_completion_prompt_forms(prompt, batch):
    assert CompletionRequest(prompt=prompt).prompts() == batch


@pytest.mark.parametrize(
    ("kw", "path", "fragment"),
    [
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": []}, "prompt", "must be a non-empty string"),
        ({"prompt": [1, "a"]}, "prompt", "token ids"),
        ({"prompt": [1, -2]}, "prompt", "token ids"),
        ({"prompt": [[1], []]}, "prompt", "token ids"),
        ({"prompt": ["a", ""]}, "prompt", "must not be empty"),
        ({"prompt": [True]}, "prompt", "token ids"),
        ({}, "prompt", "Field required"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", "at least 1"),
        ({"prompt": "x", "logprobs": 21}, "logprobs", "between 0 and 20"),
        ({"prompt": "x", "temperature": 2.5}, "temperature", "[0, 2]"),
        ({"prompt": "x", "temperature": -0.1}, "temperature", "[0, 2]"),
        ({"prompt": "x", "temperature": float("nan")}, "temperature", "[0, 2]"),
        ({"prompt": "x", "top_p": 0}, "top_p", "(0, 1]"),
        ({"prompt": "x", "top_p": 1.01}, "top_p", "(0, 1]"),
        ({"prompt": "x", "top_k": -2}, "top_k", "-1 or 0"),
        ({"prompt": "x", "min_p": 1.5}, "min_p", "[0, 1]"),
        ({"prompt": "x", "n": 0}, "n", "between 1 and 16"),
        ({"prompt": "x", "n": 17}, "n", "between 1 and 16"),
        ({"prompt": "x", "presence_penalty": 3}, "presence_penalty", "[-2, 2]"),
        ({"prompt": "x", "frequency_penalty": -3}, "frequency_penalty", "[-2, 2]"),
        ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty", "positive"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"prompt": "x", "stop": ""}, "stop", "must not be empty"),
        ({"prompt": "x", "stop": ["ok", ""]}, "stop", "must not be empty"),
        ({"prompt": "x", "stop": 5}, "stop", "string or a list of strings"),
    ],
)
def test_completion_validation_names_the_field(kw, path, fragment):
    got_path, msg = first_error(CompletionRequest, **kw)
    assert got_path == path and fragment in msg


def test_sampling_edges_are_accepted():
    r = CompletionRequest(prompt="x", temperature=0, top_p=1, top_k=-1, min_p=0, n=16, stop="###",
                          repetition_penalty=1.2, seed=-1, max_tokens=None, logprobs=0)  # fmt: skip
    assert r.stop_strings() == ["###"] and r.max_tokens is None
    assert CompletionRequest(prompt="x", n=None, stream=None, echo=None).n == 1  # explicit null = default


def test_chat_defaults_and_helpers():
    r = chat(model="mimo", stream=True, stream_options={"include_usage": True}, response_format={"type": "json_object"})
    assert r.max_new_tokens() is None and r.include_usage and not r.logprobs
    assert r.effective_tool_choice() == "none" and r.tools_for_parsing() is None
    assert r.thinking_enabled() is None  # left to the chat template's own default
    assert chat(chat_template_kwargs={"enable_thinking": True}).thinking_enabled() is True
    assert chat(chat_template_kwargs={"enable_thinking": False}).thinking_enabled() is False
    assert chat(max_tokens=10).max_new_tokens() == 10
    assert chat(max_tokens=10, max_completion_tokens=20).max_new_tokens() == 20
    assert not chat(stream=True, stream_options={"include_usage": False}).include_usage


def test_chat_messages_all_roles_and_history():
    r = ChatCompletionRequest(
        messages=[
            {"role": "system", "content": "You are MiMo."},
            {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {
                "role": "assistant",
                "content": None,
                "reasoning": "think first",  # alternative spelling some clients send
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}},
                    {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": '{"y": [2]}'}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ]
    )
    system, developer, user, assistant, tool = r.messages
    assert developer.text() == "be brief" and user.text() == "a\nb" and assistant.text() == ""
    assert assistant.reasoning_content == "think first"
    assert assistant.tool_calls[0].function.arguments == '{"x": 1}'  # an object is re-encoded as a JSON string
    assert assistant.tool_calls[1].function.arguments_dict() == {"y": [2]}
    assert tool.tool_call_id == "call_1" and tool.text() == "42"
    assert ToolCall(function={"name": "f", "arguments": "not json"}).function.arguments_dict() == {}


@pytest.mark.parametrize(
    ("kw", "path", "fragment"),
    [
        ({"messages": []}, "messages", "at least one message"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "Input should be"),
        ({"messages": [{"role": "user"}]}, "messages[0]", "content is required"),
        ({"messages": [*USER, {"role": "tool", "content": None}]}, "messages[1]", "content is required"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content",
            "only 'text' parts",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content", "'text' field"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "string or a list"),
        ({"max_tokens": 0}, "max_tokens", "at least 1"),
        ({"max_completion_tokens": -5}, "max_completion_tokens", "at least 1"),
        ({"top_logprobs": 3}, "top_logprobs", "requires logprobs=true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "between 0 and 20"),
        ({"temperature": 9}, "temperature", "[0, 2]"),
        ({"n": 100}, "n", "between 1 and 16"),
        ({"stop": ["a", ""]}, "stop", "must not be empty"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name", "must match"),
        ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name", "must match"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name", "Field required"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": ["a"]}}]},
            "tools[0].function.parameters",
            "JSON schema object",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
            "tools[0].function.parameters",
            "type 'object'",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": []}}}]},
            "tools[0].function.parameters",
            "properties must be an object",
        ),
        ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type", "Input should be"),
        ({"tools": [WEATHER, WEATHER]}, "tools", "unique"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
            "tool_choice",
            "'get_time', which is not in tools",
        ),
        ({"tool_choice": "required"}, "tool_choice", "at least one tool"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "'none', 'auto', 'required'"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice", "'none', 'auto', 'required'"),
        # OpenAI's strict edges
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when stream is true"),
        ({"stream": False, "stream_options": {"include_usage": True}}, "stream_options", "only allowed when stream"),
        ({"messages": [*USER, {"role": "tool", "content": "42"}]}, "messages[1]", "tool_call_id"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"n": "2"}, "n", "valid integer"),
        ({"temperature": "0.5"}, "temperature", "valid number"),
        ({"max_tokens": "10"}, "max_tokens", "valid integer"),
        ({"logprobs": 1}, "logprobs", "valid boolean"),
        ({"seed": 2**70}, "seed", "64-bit signed integer"),
        ({"seed": -(2**63) - 1}, "seed", "64-bit signed integer"),
        ({"chat_template_kwargs": {"enable_thinking": "false"}}, "chat_template_kwargs", "true or false"),
    ],
)
def test_chat_validation_names_the_field(kw, path, fragment):
    got_path, msg = first_error(chat, **kw)
    assert got_path == path and fragment in msg, (got_path, msg)


def test_strict_types_still_take_integers_as_numbers():
    r = chat(temperature=1, top_p=1, seed=2**63 - 1, stream=True, stream_options={"include_usage": True})
    assert r.temperature == 1.0 and r.include_usage
    assert chat(messages=[*USER, {"role": "tool", "tool_call_id": "call_1", "content": "42"}]).messages[1].tool_call_id


def test_tool_choice_and_tools_for_parsing():
    time_tool = {"type": "function", "function": {"name": "get_time"}}
    r = chat(tools=[WEATHER, time_tool])
    assert r.effective_tool_choice() == "auto"
    assert [t["function"]["name"] for t in r.tools_for_parsing()] == ["get_weather", "get_time"]
    assert r.tools_for_parsing()[0] == WEATHER
    assert chat(tools=[WEATHER], tool_choice="none").tools_for_parsing() is None
    assert chat(tools=[WEATHER], tool_choice="required").tools_for_parsing() == [WEATHER]
    named = chat(tools=[WEATHER, time_tool], tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert isinstance(named.tool_choice, NamedToolChoice)
    assert named.tools_for_parsing() == [time_tool]  # calls to other tools stay text


# ------------------------------------------------------------------------------------- errors


def test_error_body_shape():
    assert error_body("boom", "server_error") == {
        "error": {"message": "boom", "type": "server_error", "param": None, "code": None}
    }
    assert error_body("bad", "invalid_request_error", "n", 400)["error"]["code"] == 400


def test_validation_error_body_from_pydantic_and_fastapi_locations():
    with pytest.raises(ValidationError) as exc:
        chat(temperature=5, n=0)
    body = validation_error_body(exc.value.errors())
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "temperature"
    assert body["error"]["message"] == "temperature: must be in [0, 2], got 5.0; n: must be between 1 and 16, got 0"
    # FastAPI prefixes "body"; union members add type tags: neither is part of the field path
    fastapi_errors = [{"loc": ("body", "messages", 0, "content", "list[TextContentPart]", 1, "text"), "msg": "x"}]
    assert validation_error_body(fastapi_errors)["error"]["param"] == "messages[0].content[1].text"
    assert error_location(("body", "tool_choice", "NamedToolChoice", "function", "name")) == "tool_choice.function.name"
    many = [{"loc": ("n",), "msg": f"e{i}"} for i in range(7)]
    assert validation_error_body(many)["error"]["message"].endswith("; ... and 2 more")
    assert validation_error_body([])["error"]["message"] == "invalid request"


# ------------------------------------------------------------------------------------------ responses


def chat_response():
    call = ToolCall(id="call_abc", function={"name": "get_weather", "arguments": '{"city": "Oslo"}'})
    message = ChatCompletionMessage(content=None, reasoning_content="plan", tool_calls=[call])
    choice = ChatCompletionChoice(index=0, message=message, finish_reason="tool_calls")
    return ChatCompletionResponse(model="mimo", choices=[choice], usage=UsageInfo.of(10, 5))


def test_chat_response_wire_shape():
    data = json.loads(chat_response().model_dump_json())
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    assert data["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    message = data["choices"][0]["message"]
    assert message["content"] is None and "content" in message  # null, not missing
    plain = ChatCompletionMessage(content="hi").model_dump()
    assert plain == {"role": "assistant", "content": "hi", "reasoning_content": None}  # no tool_calls key at all
    assert "tool_calls" not in ChatCompletionMessage(content="hi", tool_calls=[]).model_dump()
    assert message["tool_calls"][0] == {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }


def test_chunk_serialises_only_what_is_set():
    parser_deltas = [
        {"reasoning_content": "hm"},
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
    ]
    for d in parser_deltas:  # the output parser's dicts validate and serialise back unchanged
        chunk = ChatCompletionChunk(
            id="chatcmpl-1", model="mimo", choices=[ChatCompletionStreamChoice(index=0, delta=DeltaMessage(**d))]
        )
        data = json.loads(chunk.model_dump_json())
        assert data["choices"][0]["delta"] == d
        assert data["choices"][0]["finish_reason"] is None and "usage" not in data
    usage_chunk = ChatCompletionChunk(id="chatcmpl-1", model="mimo", choices=[], usage=UsageInfo.of(1, 2))
    assert json.loads(usage_chunk.model_dump_json())["usage"]["total_tokens"] == 3
    first = ChatCompletionStreamChoice(index=0, delta=DeltaMessage(role="assistant", content=""))
    assert first.model_dump()["delta"] == {"role": "assistant", "content": ""}  # "" is set, only None is dropped


def test_completion_and_model_list_shapes():
    r = CompletionResponse(model="mimo", choices=[CompletionChoice(index=0, text="hi", finish_reason="length")])
    data = r.model_dump()
    assert data["object"] == "text_completion" and data["id"].startswith("cmpl-") and data["usage"] is None
    models = ModelList(data=[ModelCard(id="mimo", max_model_len=4096)]).model_dump()
    assert models["object"] == "list" and models["data"][0]["object"] == "model"


def test_responses_parse_with_the_openai_client_types():
    openai_types = pytest.importorskip("openai.types")
    chat_types = pytest.importorskip("openai.types.chat")
    parsed = chat_types.ChatCompletion.model_validate_json(chat_response().model_dump_json())
    assert parsed.choices[0].message.tool_calls[0].function.name == "get_weather"
    chunk = ChatCompletionChunk(
        id="chatcmpl-1",
        model="mimo",
        choices=[ChatCompletionStreamChoice(index=0, delta=DeltaMessage(content="x"), finish_reason="stop")],
    )
    assert chat_types.ChatCompletionChunk.model_validate_json(chunk.model_dump_json()).choices[0].delta.content == "x"
    completion = CompletionResponse(
        model="mimo", choices=[CompletionChoice(index=0, text="t", finish_reason="stop")], usage=UsageInfo.of(1, 1)
    )
    assert openai_types.Completion.model_validate_json(completion.model_dump_json()).choices[0].text == "t"
    assert openai_types.Model.model_validate(ModelCard(id="mimo").model_dump()).id == "mimo"
