"""The OpenAI-compatible server end to end: a real uvicorn server on loopback, the official ``openai`` client,
streaming, tools, logprobs, load with cancellations, and malformed requests.

The model is tiny and random, so its text is noise; tool calls and reasoning come from the scripting engine
wrapper of ``conftest.py`` (a ``[[marker]]`` in the last user turn), through the same streaming path.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from mimo.server.app import build_app
from mimo.server.async_engine import AsyncEngine
from tests.server.conftest import ANSWER, API_KEY, MAX_BODY, MAX_MODEL_LEN, MODEL, TOOL_XML, StalledEngine, run_server

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _engine_idle(server, timeout: float = 15.0) -> tuple[int, int, int]:
    """Wait until no request is in flight; then (running, waiting, cache bytes) read on the engine's thread."""
    deadline = time.monotonic() + timeout
    while True:
        state = server.aengine.call(lambda e: (e.num_running, e.num_waiting, e.cache_bytes_in_use())).result(10)
        if (state == (0, 0, 0) and server.aengine.stats()["in_flight"] == 0) or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------- basics


def test_models_health_and_metrics(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{server.url}/health").status_code == 200  # no key needed
    text = httpx.get(f"{server.url}/metrics", headers=HEADERS).text
    for name in ("mimo_requests_total", "mimo_requests_running", "mimo_time_to_first_token_seconds_bucket",
                 "mimo_e2e_request_latency_seconds_count", "mimo_generation_tokens_total"):
        assert name in text


def test_completion_text_and_token_prompts(client, server):
    r = client.completions.create(model=MODEL, prompt="hello world", max_tokens=6, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    ids = server.tokenizer.encode("hello world")
    assert r.usage.prompt_tokens == len(ids)
    # A token-id prompt equal to the text's tokens gives the same greedy text; a batch gives prompts x n choices.
    batch = client.completions.create(model=MODEL, prompt=[ids, ids], n=2, max_tokens=6, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert sorted(c.index for c in batch.choices) == [0, 1, 2, 3]
    assert {c.text for c in batch.choices} == {r.choices[0].text}
    assert batch.usage.completion_tokens == 24 and batch.usage.prompt_tokens == 2 * len(ids)
    echo = client.completions.create(model=MODEL, prompt="hello world", max_tokens=3, temperature=0, echo=True)
    assert echo.choices[0].text.startswith("hello world")


def test_chat_and_stream_equal_greedy(client):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is the weather?"}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    msg = full.choices[0].message
    assert msg.role == "assistant" and full.choices[0].finish_reason in ("stop", "length")
    content, reasoning, finish, usage = [], [], None, None
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
        for c in chunk.choices:
            content.append(c.delta.content or "")
            reasoning.append(getattr(c.delta, "reasoning_content", None) or "")
            finish = c.finish_reason or finish
    assert "".join(content) == (msg.content or "")
    assert "".join(reasoning) == (getattr(msg, "reasoning_content", None) or "")
    assert finish == full.choices[0].finish_reason
    assert usage is not None and usage.model_dump() == full.usage.model_dump()


def test_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="The quick", max_tokens=5, temperature=0, logprobs=3,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 4 and chosen <= 0
        assert abs(chosen - max(top.values())) < 1e-4  # greedy: the chosen token is the most likely one
    assert lp.text_offset == sorted(lp.text_offset)
    # Streamed with echo: the prompt's tokens come first (logprob null), then the 5 generated ones.
    text, tokens, logprobs = "", [], []
    for chunk in client.completions.create(model=MODEL, prompt="The quick", max_tokens=5, temperature=0, logprobs=3,
                                           echo=True, stream=True, extra_body={"ignore_eos": True}):
        text += chunk.choices[0].text
        tokens += chunk.choices[0].logprobs.tokens
        logprobs += chunk.choices[0].logprobs.token_logprobs
    assert text == "The quick" + r.choices[0].text
    assert logprobs[-5:] == lp.token_logprobs and all(x is None for x in logprobs[:-5]) and len(tokens) > 5
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                          temperature=0, logprobs=True, top_logprobs=2,
                                          extra_body={"ignore_eos": True})
    items = chat.choices[0].logprobs.content
    assert len(items) == chat.usage.completion_tokens == 4
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 and t.bytes is not None for t in items)


# --------------------------------------------------------------------------------------------- tools and reasoning


def test_tool_call_round_trip(client, server):
    messages = [{"role": "user", "content": "What is the weather in Paris? [[tool]]"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, temperature=0.3)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"}]
    answer = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    assert answer.choices[0].message.content == ANSWER and answer.choices[0].finish_reason == "stop"
    # The assistant's call went back into the prompt in the model's own XML, followed by the tool's answer.
    assert TOOL_XML in server.scripted.prompts[-1] and "<tool_response>\nsunny, 24 C\n</tool_response>" in \
        server.scripted.prompts[-1]
    # Streamed: a header delta (id, name) then the arguments, and finish_reason tool_calls.
    stream = client.chat.completions.create(model=MODEL, messages=messages[:1], tools=TOOLS, stream=True)
    calls, finish = {}, None
    for chunk in stream:
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for tc in c.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                entry["name"] += tc.function.name or ""
                entry["arguments"] += tc.function.arguments or ""
    assert finish == "tool_calls" and calls == {0: {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_reasoning_and_malformed_tool_xml(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "2 + 2? [[think]]"}],
                                       extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    msg = r.choices[0].message
    assert msg.reasoning_content == "The user wants 2 + 2." and msg.content == "The answer is 4."
    bad = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "go [[badtool]]"}],
                                         tools=TOOLS)
    assert bad.choices[0].finish_reason == "stop" and not bad.choices[0].message.tool_calls
    assert "no_such_tool" in bad.choices[0].message.content  # malformed XML stays text: never a 500


def test_engine_failure_is_contained(client):
    with pytest.raises(openai.InternalServerError, match="injected engine failure"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "[[crash]]"}])
    r = client.completions.create(model=MODEL, prompt="hello", max_tokens=3, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3


def test_queue_full_is_503(tokenizer):
    engine = AsyncEngine(StalledEngine(), max_waiting=1)
    try:
        with run_server(build_app(engine, tokenizer, MODEL)) as url:
            async def go():
                async with httpx.AsyncClient(base_url=url, timeout=10) as c:
                    body = {"prompt": "hi", "stream": True}
                    async with c.stream("POST", "/v1/completions", json=body) as first:
                        assert first.status_code == 200
                        second = await c.post("/v1/completions", json=body)
                    return second

            second = asyncio.run(go())
            assert second.status_code == 503 and second.json()["error"]["code"] == "queue_full"
    finally:
        engine.close()


# --------------------------------------------------------------------------------------------- load


async def _stream_completion(c: httpx.AsyncClient, prompt: str, max_tokens: int, cancel: bool = False) -> dict:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    text, usage, finish = [], None, None
    async with c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            if cancel and event["choices"]:
                return {"cancelled": True}  # leaving the block closes the connection mid-stream
            for ch in event["choices"]:
                text.append(ch["text"])
                finish = ch["finish_reason"] or finish
            usage = event.get("usage") or usage
    return {"text": "".join(text), "usage": usage, "finish": finish}


def test_32_concurrent_streams(server):
    async def go():
        async with httpx.AsyncClient(base_url=server.url, headers=HEADERS, timeout=120,
                                     limits=httpx.Limits(max_connections=64)) as c:
            t0 = time.perf_counter()
            single = await _stream_completion(c, "hello world", 64)
            t_single = time.perf_counter() - t0
            t0 = time.perf_counter()
            many = await asyncio.gather(*[_stream_completion(c, f"request {i}: hello", 64) for i in range(32)])
            return single, t_single, many, time.perf_counter() - t0

    single, t_single, many, t_many = asyncio.run(go())
    assert single["usage"]["completion_tokens"] == 64
    for r in many:
        assert r["usage"]["completion_tokens"] == 64 and r["finish"] == "length"
    one, agg = 64 / t_single, 32 * 64 / t_many
    print(f"\nsingle stream: {one:.0f} tok/s; 32 concurrent streams: {agg:.0f} tok/s aggregate ({agg / one:.1f}x)")


def test_500_requests_with_100_cancelled(server):
    rss_before = _rss_bytes()
    aborted_before = server.aengine.metrics.requests.value(status="aborted")
    finished_before = server.aengine.metrics.requests.value(status="finished")

    async def one(c: httpx.AsyncClient, i: int, sem: asyncio.Semaphore) -> str:
        async with sem:
            if i % 5 == 0:  # 100 of them: stream a long completion and hang up after the first chunk
                await _stream_completion(c, f"cancel me {i}", 600, cancel=True)
                return "cancelled"
            if i % 5 == 1:
                r = await c.post("/v1/chat/completions", json={
                    "model": MODEL, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 4, "n": 2})
                assert r.status_code == 200, r.text
                assert len(r.json()["choices"]) == 2
                return "chat"
            if i % 5 == 2:
                r = await _stream_completion(c, f"stream {i}", 4)
                assert r["usage"]["completion_tokens"] == 4
                return "stream"
            r = await c.post("/v1/completions", json={"model": MODEL, "prompt": f"prompt {i}", "max_tokens": 4})
            assert r.status_code == 200, r.text
            assert 1 <= r.json()["usage"]["completion_tokens"] <= 4
            return "completion"

    async def go():
        sem = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=server.url, headers=HEADERS, timeout=120,
                                     limits=httpx.Limits(max_connections=64)) as c:
            return await asyncio.gather(*[one(c, i, sem) for i in range(500)])

    t0 = time.perf_counter()
    kinds = asyncio.run(go())
    elapsed = time.perf_counter() - t0
    assert kinds.count("cancelled") == 100
    assert _engine_idle(server) == (0, 0, 0)  # nothing running or waiting, every cache slot freed
    aborted = server.aengine.metrics.requests.value(status="aborted") - aborted_before
    finished = server.aengine.metrics.requests.value(status="finished") - finished_before
    assert aborted + finished == 500 and aborted >= 50  # 600-token streams are cut long before their end
    growth = _rss_bytes() - rss_before
    print(f"\n500 requests in {elapsed:.1f}s; {aborted:.0f} aborted mid-stream; RSS growth {growth / 2**20:.1f} MiB")
    assert growth < 300 * 2**20


# --------------------------------------------------------------------------------------------- bad input

_CHAT = "/v1/chat/completions"
_COMP = "/v1/completions"
_MSG = [{"role": "user", "content": "hi"}]


def _chat(**kw):
    return {"model": MODEL, "messages": _MSG, "max_tokens": 2, **kw}


def _comp(**kw):
    return {"model": MODEL, "prompt": "hi", "max_tokens": 2, **kw}


BAD = {  # name -> (path, body: dict | bytes, headers or None for the default, status, text the message contains)
    "invalid json": (_CHAT, b'{"model": "x", "messages": [', None, 400, "not valid JSON"),
    "json not an object": (_CHAT, b"[1, 2, 3]", None, 400, "JSON object"),
    "empty body": (_CHAT, b"", None, 400, "empty"),
    "invalid utf-8": (_COMP, b'{"prompt": "\xff\xfe hi"}', None, 400, "UTF-8"),
    "lone surrogate": (_COMP, b'{"prompt": "a\\ud800b"}', None, 400, "surrogate"),
    "prompt wrong type": (_COMP, _comp(prompt=123), None, 400, "prompt"),
    "max_tokens wrong type": (_COMP, _comp(max_tokens="ten"), None, 400, "max_tokens"),
    "unknown model": (_CHAT, _chat(model="gpt-5"), None, 404, "does not exist"),
    "empty messages": (_CHAT, _chat(messages=[]), None, 400, "at least one message"),
    "messages not a list": (_CHAT, _chat(messages="hi"), None, 400, "messages"),
    "unknown role": (_CHAT, _chat(messages=[{"role": "wizard", "content": "hi"}]), None, 400, "role"),
    "image content": (_CHAT, _chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), None, 400,
                      "only 'text' parts"),
    "temperature -1": (_CHAT, _chat(temperature=-1), None, 400, "temperature"),
    "top_p 2": (_CHAT, _chat(top_p=2), None, 400, "top_p"),
    "max_tokens 1e9": (_CHAT, _chat(max_tokens=10**9), None, 400, "maximum context length"),
    "prompt over the context": (_COMP, _comp(prompt="hello " * MAX_MODEL_LEN), None, 400, "maximum context length"),
    "n 100": (_CHAT, _chat(n=100), None, 400, "between 1 and 16"),
    "logprobs 50": (_COMP, _comp(logprobs=50), None, 400, "between 0 and 20"),
    "top_logprobs without logprobs": (_CHAT, _chat(top_logprobs=3), None, 400, "requires logprobs"),
    "stop list of 10": (_COMP, _comp(stop=[f"s{i}" for i in range(10)]), None, 400, "at most"),
    "empty prompt": (_COMP, _comp(prompt=""), None, 400, "empty"),
    "token id outside the vocabulary": (_COMP, _comp(prompt=[5, 10**6]), None, 400, "outside the vocabulary"),
    "tool name with spaces": (_CHAT, _chat(tools=[{"type": "function", "function": {"name": "bad name!"}}]), None,
                              400, "not a valid function name"),
    "tool parameters not an object": (_CHAT, _chat(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "string"}}}]), None, 400, "type 'object'"),
    "garbage tools": (_CHAT, _chat(tools="garbage"), None, 400, "tools"),
    "tool_choice unknown function": (_CHAT, _chat(tools=TOOLS, tool_choice={"type": "function",
                                                                            "function": {"name": "nope"}}),
                                     None, 400, "not in tools"),
    "history tool call arguments not JSON": (_CHAT, _chat(messages=[
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": "{oops"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "x"}]), None, 400, "not valid JSON"),
    "stream_options wrong type": (_CHAT, _chat(stream=True, stream_options="yes"), None, 400, "stream_options"),
    "oversized body": (_COMP, _comp(prompt="x" * (MAX_BODY + 10)), None, 413, "larger than the limit"),
    # OpenAI's exact edges (issue #10)
    "stream_options without stream": (_CHAT, _chat(stream_options={"include_usage": True}), None, 400,
                                      "only allowed when stream is true"),
    "tool message without tool_call_id": (_CHAT, _chat(messages=[*_MSG, {"role": "tool", "content": "x"}]), None,
                                          400, "tool_call_id"),
    "stream as a string": (_CHAT, _chat(stream="yes"), None, 400, "valid boolean"),
    "number as a string": (_CHAT, _chat(temperature="0.5"), None, 400, "valid number"),
    "integer as a string": (_COMP, _comp(n="2"), None, 400, "valid integer"),
    "seed 2**70": (_COMP, _comp(seed=2**70), None, 400, "64-bit signed integer"),
    "enable_thinking as a string": (_CHAT, _chat(chat_template_kwargs={"enable_thinking": "false"}), None, 400,
                                    "true or false"),
    "missing api key": (_COMP, _comp(), {}, 401, "missing API key"),
    "wrong api key": (_COMP, _comp(), {"Authorization": "Bearer sk-wrong"}, 401, "incorrect API key"),
    "unknown route": ("/v1/nope", _comp(), None, 404, "Not Found"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_request(server, name):
    path, body, headers, status, needle = BAD[name]
    headers = HEADERS if headers is None else headers
    kw = {"content": body, "headers": {**headers, "Content-Type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body, "headers": headers}
    r = httpx.post(f"{server.url}{path}", timeout=30, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert needle.lower() in err["message"].lower(), err
    if name in PARAMS:
        assert err["param"] == PARAMS[name], err


PARAMS = {  # the field a 400 names
    "stream_options without stream": "stream_options", "tool message without tool_call_id": "messages[1]",
    "stream as a string": "stream", "number as a string": "temperature", "integer as a string": "n",
    "seed 2**70": "seed", "enable_thinking as a string": "chat_template_kwargs",
    "token id outside the vocabulary": "prompt",
}


def test_wrong_method_and_server_still_serves(server, client):
    r = httpx.get(f"{server.url}/v1/chat/completions", headers=HEADERS)
    assert r.status_code == 405 and "message" in r.json()["error"]
    r = client.chat.completions.create(model=MODEL, messages=_MSG, max_tokens=3, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3


def test_chunked_body_over_the_limit_is_413(server):
    # No Content-Length (chunked transfer): the limit is enforced on the bytes actually read.
    chunks = iter([b'{"prompt": "', b"x" * MAX_BODY, b'"}'])
    r = httpx.post(f"{server.url}{_COMP}", content=chunks, headers={**HEADERS, "Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than the limit" in r.json()["error"]["message"]


def test_non_streamed_request_is_aborted_when_the_client_leaves(server):
    aborted = server.aengine.metrics.requests.value(status="aborted")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}{_COMP}", headers=HEADERS, timeout=0.5,
                   json={"prompt": "a long one", "max_tokens": MAX_MODEL_LEN - 16, "ignore_eos": True})
    deadline = time.monotonic() + 10
    while server.aengine.metrics.requests.value(status="aborted") == aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.aengine.metrics.requests.value(status="aborted") == aborted + 1
    assert _engine_idle(server) == (0, 0, 0)


def test_serve_cli_explains_a_missing_model(tmp_path, capsys):
    from mimo.cli.main import main

    assert main(["serve", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no model at" in err and "config.json" in err


def test_serve_cli_explains_a_bad_or_taken_port_before_loading(capsys):
    import socket

    from mimo.cli.main import main

    assert main(["serve", "--port", "99999"]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == "mimo serve: error: --port 99999 is not a port number (0-65535)" and "serving" not in out
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        assert main(["serve", "--port", str(port)]) == 2
        out, err = capsys.readouterr()
    assert time.monotonic() - t0 < 5 and out == ""  # refused before the model loads, no banner
    assert len(err.strip().splitlines()) == 1 and f"cannot listen on 127.0.0.1:{port}" in err and "in use" in err
