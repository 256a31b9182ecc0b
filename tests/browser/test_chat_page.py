"""The chat page in a real browser (Debian's headless Chromium driven by Playwright) against a real server.

What a user sees is checked against what the API and the engine say: the page's reply equals the API's greedy
completion; its token colours equal the engine's provenance and its figures the engine's acceptance stats;
Esc aborts the request on the server; reasoning, tool cards and tool results work; model output never becomes
HTML; a key-protected server refuses the page until the key is entered.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import openai
import pytest

from mimo.server.playground import CSP
from tests.browser.conftest import MODEL, PAGE_KEY, XSS
from tests.server.conftest import ANSWER

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
# For the test model, max_tokens cuts off no accepted draft (see test_token_colours_are_the_engines_provenance),
# so the page's count of accepted tokens is the engine's.
MAX_TOKENS = 40
TIMEOUT_MS = 20_000


def _open(page, server, wait_for_model: bool = True):
    response = page.goto(server.url + "/")
    if wait_for_model:
        page.locator("#model-name").filter(has_text=MODEL).wait_for(timeout=TIMEOUT_MS)
    return response


def _send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def _reply(page, n: int):
    """The n-th assistant reply (0-based), once its stream has ended."""
    reply = page.locator(".msg.assistant").nth(n)
    page.locator('.msg.assistant[data-done="true"]').nth(n).wait_for(timeout=TIMEOUT_MS)
    return reply


def _tokens(reply) -> list[list]:
    return reply.locator(".token-list .tok").evaluate_all("els => els.map(e => [e.textContent, Number(e.dataset.p)])")


def _metric(server, name: str, labels: str = "") -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def test_page_loads_with_the_servers_defaults_and_a_strict_policy(page, chat_server):
    response = _open(page, chat_server)
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in response.headers
    assert page.title() == "mimo chat"
    assert page.text_content("#mtp-info") == "MTP: 3 draft tokens per step"
    assert page.input_value("#temperature") == "0.7" and page.input_value("#top-p") == "0.95"  # generation_config
    assert page.locator("#key-form").is_hidden()
    legend = page.locator(".legend .tok").evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert len(set(legend)) == 4  # the style sheet loaded: four distinct provenance colours


def test_enter_sends_and_shift_enter_adds_a_line(page, chat_server):
    _open(page, chat_server)
    page.fill("#max-tokens", "4")
    page.click("#prompt")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second")
    assert page.input_value("#prompt") == "first line\nsecond"
    assert page.locator(".msg.user").count() == 0
    page.keyboard.press("Enter")
    assert page.text_content(".msg.user .text") == "first line\nsecond"
    _reply(page, 0)
    assert page.input_value("#prompt") == ""


def test_streamed_reply_equals_the_apis_greedy_completion(page, chat_server):
    _open(page, chat_server)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", str(MAX_TOKENS))
    _send(page, "Tell me about the weather.")
    reply = _reply(page, 0)
    client = openai.OpenAI(base_url=f"{chat_server.url}/v1", api_key="unused", max_retries=0)
    api = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me about the weather."}],
                                         temperature=0, max_tokens=MAX_TOKENS)
    assert api.choices[0].message.content
    assert reply.locator(".text").text_content() == api.choices[0].message.content
    assert reply.locator(".stats").get_attribute("data-tokens") == str(api.usage.completion_tokens)


def test_token_colours_are_the_engines_provenance(page, chat_server):
    _open(page, chat_server)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", str(MAX_TOKENS))
    _send(page, "Colour the tokens.")
    reply = _reply(page, 0)
    engine = chat_server.engine
    rid = engine.order[-1]
    stats = engine.outputs[rid].stats
    tok = chat_server.tokenizer
    want = [[tok.token_bytes(t).decode("utf-8", errors="replace"), p] for t, p in engine.streamed[rid]]
    shown = _tokens(reply)
    assert shown == want
    assert {p for _, p in shown} == {0, 1, 2, 3}  # trunk tokens and drafts accepted at every depth
    colours = reply.locator(".token-list .tok").evaluate_all(
        "els => Object.fromEntries(els.map(e => [e.dataset.p, getComputedStyle(e).backgroundColor]))")
    assert len(set(colours.values())) == 4
    figures = reply.locator(".stats")
    assert int(figures.get_attribute("data-accepted")) == stats.accepted == sum(p > 0 for _, p in shown) > 0
    assert float(figures.get_attribute("data-acceptance-length")) == pytest.approx(stats.acceptance_length)
    assert float(figures.get_attribute("data-ttft-ms")) > 0
    text = figures.text_content()
    assert f"acceptance length {stats.acceptance_length:.2f}" in text and "tokens/s" in text and "TTFT" in text
    assert reply.locator(".text").is_visible() and reply.locator(".token-list").is_visible()
    page.select_option("#view", "tokens")
    assert reply.locator(".text").is_hidden() and reply.locator(".token-list").is_visible()
    page.select_option("#view", "text")
    assert reply.locator(".text").is_visible() and reply.locator(".token-list").is_hidden()


def test_reasoning_collapses_and_goes_back_with_the_history(page, chat_server):
    _open(page, chat_server)
    page.select_option("#thinking", "on")
    page.fill("#max-tokens", "4")
    _send(page, "2 + 2? [[think]]")
    reply = _reply(page, 0)
    reasoning = reply.locator(".reasoning-text")
    assert reasoning.text_content() == "The user wants 2 + 2."
    assert reply.locator(".text").text_content() == "The answer is 4."
    assert reasoning.is_visible()
    reply.locator(".reasoning summary").click()
    assert reasoning.is_hidden()
    reply.locator(".reasoning summary").click()
    assert reasoning.is_visible()
    with page.expect_request("**/v1/chat/completions") as request:
        _send(page, "Thanks.")
    body = request.value.post_data_json
    assert body["messages"][1] == {"role": "assistant", "content": "The answer is 4.",
                                   "reasoning_content": "The user wants 2 + 2."}
    assert body["chat_template_kwargs"] == {"enable_thinking": True} and body["mimo_provenance"] is True
    _reply(page, 1)


def test_tool_call_card_and_a_pasted_result_continue_the_chat(page, chat_server):
    _open(page, chat_server)
    page.click("#tools-panel summary")
    page.fill("#tools", json.dumps(TOOLS))
    _send(page, "What is the weather in Paris? [[tool]]")
    reply = _reply(page, 0)
    card = reply.locator(".tool-card")
    assert card.locator(".tool-name").text_content() == "get_weather"
    assert card.locator(".tool-args").text_content() == json.dumps({"city": "Paris"}, indent=2)
    card.locator(".tool-result").fill("sunny, 24 C")
    with page.expect_request("**/v1/chat/completions") as request:
        reply.locator(".tool-send").click()
    body = request.value.post_data_json
    call = body["messages"][1]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert body["messages"][1]["content"] is None
    assert body["messages"][2] == {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 24 C"}
    assert body["tools"] == TOOLS and "chat_template_kwargs" not in body  # thinking left at the model's default
    assert _reply(page, 1).locator(".text").text_content() == ANSWER
    assert "<tool_response>\nsunny, 24 C\n</tool_response>" in chat_server.engine.prompts[-1]


def test_model_output_and_tool_arguments_are_text_never_html(page, chat_server):
    _open(page, chat_server)
    page.select_option("#thinking", "on")
    page.click("#tools-panel summary")
    page.fill("#tools", json.dumps(TOOLS))
    _send(page, "[[xss]]")
    reply = _reply(page, 0)
    assert reply.locator(".reasoning-text").text_content() == XSS
    assert reply.locator(".text").text_content() == XSS
    assert XSS in "".join(t for t, _ in _tokens(reply))
    _send(page, "[[xsstool]]")
    args = json.loads(_reply(page, 1).locator(".tool-args").text_content())
    assert args == {"city": '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'}
    page.wait_for_timeout(200)  # an <img src=x> would have failed to load by now
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("#messages script, #messages img, #messages a, #messages iframe").count() == 0


def test_esc_stops_the_stream_and_the_server_aborts_the_request(page, chat_server):
    _open(page, chat_server)
    aborted = _metric(chat_server, "mimo_requests_total", '{status="aborted"}')
    _send(page, "Go on and on. [[long]]")
    page.locator(".msg.assistant .tok").nth(9).wait_for(timeout=TIMEOUT_MS)  # 10 tokens in, mid-reply
    assert _metric(chat_server, "mimo_requests_running") == 1
    page.keyboard.press("Escape")
    reply = _reply(page, 0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        _metric(chat_server, "mimo_requests_total", '{status="aborted"}') == aborted
        or _metric(chat_server, "mimo_requests_running") != 0
    ):
        time.sleep(0.05)
    assert _metric(chat_server, "mimo_requests_total", '{status="aborted"}') == aborted + 1
    assert _metric(chat_server, "mimo_requests_running") == 0
    assert "stopped" in reply.locator(".stats").text_content()
    shown = len(_tokens(reply))
    assert 10 <= shown < 1000
    assert page.is_enabled("#send") and page.is_disabled("#stop")


def test_key_protected_server_refuses_the_page_until_the_key_is_entered(page, key_server):
    _open(page, key_server, wait_for_model=False)
    # the form appears when the page's first request comes back 401: after the load event, not with it
    page.locator("#key-form").wait_for(state="visible", timeout=TIMEOUT_MS)
    assert page.get_attribute("#api-key", "type") == "password"
    page.locator("#model-name").filter(has_text="API key needed").wait_for(timeout=TIMEOUT_MS)
    page.fill("#max-tokens", "6")
    _send(page, "hello")
    error = _reply(page, 0).locator(".error")
    assert error.text_content() == "HTTP 401: missing API key: send the header 'Authorization: Bearer YOUR_KEY'"
    assert page.input_value("#prompt") == "hello"  # back in the box, to send again with the key

    page.fill("#api-key", "ключ")
    page.click("#key-save")
    assert "cannot carry this key" in page.text_content("#key-status")
    page.fill("#api-key", "not the key")
    page.click("#key-save")
    page.locator("#key-status").filter(has_text="refused").wait_for(timeout=TIMEOUT_MS)
    page.fill("#api-key", PAGE_KEY)
    page.click("#key-save")
    page.locator("#key-status").filter(has_text="key accepted").wait_for(timeout=TIMEOUT_MS)
    assert page.text_content("#model-name") == MODEL and page.input_value("#api-key") == ""

    with page.expect_request("**/v1/chat/completions") as request:
        page.press("#prompt", "Enter")
    assert request.value.headers["authorization"] == f"Bearer {PAGE_KEY}"
    assert request.value.post_data_json["messages"] == [{"role": "user", "content": "hello"}]  # the 401 left no trace
    reply = _reply(page, 1)
    assert reply.locator(".error").is_hidden() and int(reply.locator(".stats").get_attribute("data-tokens")) > 0
    # the key lives in the tab's memory only
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0 and page.evaluate("document.cookie") == ""
