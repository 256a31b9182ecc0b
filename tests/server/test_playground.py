"""The chat page's server side, without a browser: what ``/`` and ``/static/*`` serve and under which policy,
the key rules, ``/v1/mimo/info``, the ``mimo_provenance`` extra on the wire (against the engine, and invisible
to the official ``openai`` client), and the URL ``mimo serve`` prints. The page itself runs in tests/browser.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from importlib import resources

import httpx
import pytest
import torch

from mimo.engine.engine import Engine
from mimo.engine.params import SamplingParams
from mimo.server.app import build_app
from mimo.server.async_engine import AsyncEngine
from mimo.server.playground import CSP
from tests.helpers import oracle_model, tiny_config
from tests.server.conftest import API_KEY, MODEL, run_server

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
STATIC = resources.files("mimo.server") / "static"
TYPES = {"/": "text/html; charset=utf-8", "/static/app.js": "text/javascript; charset=utf-8",
         "/static/app.css": "text/css; charset=utf-8"}


def test_page_and_assets_need_no_key_and_carry_the_policy(server):
    for path, kind in TYPES.items():
        r = httpx.get(server.url + path, headers={"Origin": "https://elsewhere.example"})
        assert r.status_code == 200 and r.headers["content-type"] == kind
        assert r.headers["content-security-policy"] == CSP and r.headers["x-content-type-options"] == "nosniff"
        assert "access-control-allow-origin" not in r.headers
    r = httpx.get(f"{server.url}/static/secrets.txt")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{server.url}/static/%2e%2e%2fapp.py").status_code == 404
    # everything under /v1 keeps its key, the page's info included
    for path in ("/v1/mimo/info", "/v1/models"):
        assert httpx.get(server.url + path).status_code == 401
    preflight = httpx.options(f"{server.url}/v1/chat/completions", headers={
        "Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers  # no CORS unless someone adds it


def test_info_has_what_the_page_starts_from(server):
    info = httpx.get(f"{server.url}/v1/mimo/info", headers=HEADERS).json()
    assert info == {"model": MODEL, "max_model_len": 1024, "num_speculative_tokens": 0,
                    "sampling_defaults": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                                          "repetition_penalty": 1.0},
                    "max_chat_tokens": 4096, "thinking_default": False}


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_page_has_no_inline_script_or_style_and_never_parses_model_text_as_html():
    html = (STATIC / "index.html").read_text()
    parser = _Tags()
    parser.feed(html)
    scripts = [a for t, a in parser.tags if t == "script"]
    assert scripts == [{"src": "static/app.js", "defer": None}]  # the only script: a file of the package
    assert not any(name == "style" or name.startswith("on") for _, a in parser.tags for name in a)
    assert "<style" not in html and not re.search(r"https?://", html)
    js = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "localStorage", "sessionStorage", "document.cookie", "http://", "https://"):
        assert sink not in js, sink


def _raw_stream(url: str, body: dict) -> list[dict]:
    events = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=HEADERS, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: "):]))
    return events


def test_openai_client_is_unchanged_and_provenance_comes_only_when_asked(server, client):
    messages = [{"role": "user", "content": "Say hello."}]
    kw = {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 16, "stream": True,
          "stream_options": {"include_usage": True}}
    plain, usage = "", None
    for chunk in client.chat.completions.create(**kw):
        usage = chunk.usage or usage
        for c in chunk.choices:
            assert "mimo" not in (c.model_extra or {})
            plain += c.delta.content or ""
    raw = _raw_stream(server.url, {**kw, "mimo_provenance": True})
    assert "".join(c["delta"].get("content") or "" for e in raw for c in e["choices"]) == plain
    tokens = [t for e in raw for c in e["choices"] for t in c.get("mimo", {}).get("tokens", [])]
    assert len(tokens) == usage.completion_tokens and all(p == 0 for _, p in tokens)  # no speculation here
    # The raw tokens, each as the server spells a token (what logprobs call `token`), end token included.
    scored = client.chat.completions.create(**{**kw, "stream": False, "stream_options": None}, logprobs=True)
    assert [text for text, _ in tokens][: len(scored.choices[0].logprobs.content)] == \
        [lp.token for lp in scored.choices[0].logprobs.content]
    # The official client passes the extra field through and ignores the answer's extra, unchanged.
    extra = ""
    for chunk in client.chat.completions.create(**kw, extra_body={"mimo_provenance": True}):
        for c in chunk.choices:
            extra += c.delta.content or ""
    assert extra == plain
    whole = client.chat.completions.create(**{**kw, "stream": False, "stream_options": None},
                                           extra_body={"mimo_provenance": True})
    assert whole.choices[0].message.content == plain  # a whole response has nothing to add


@pytest.fixture(scope="module")
def spec_server(tokenizer):
    """No key; the real engine with 3 MTP drafts on a model whose drafts are right for some tokens only."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = oracle_model(tiny_config(vocab_size=tokenizer.vocab_size, eos_token_id=0), seed=6,
                         draft_noise=(0.02, 0.04, 0.06))
    # fixed: the adaptive policy's choices depend on measured step times, so provenance would differ run to run
    aengine = AsyncEngine(Engine(model, tokenizer, num_speculative_tokens=3, speculative_policy="fixed"))
    try:
        with run_server(build_app(aengine, tokenizer, MODEL)) as url:
            yield url, model
    finally:
        aengine.close()
        torch.set_num_threads(threads)


def test_streamed_provenance_is_the_engines(spec_server, tokenizer):
    url, model = spec_server
    messages = [{"role": "user", "content": "Say hello."}]
    raw = _raw_stream(url, {"messages": messages, "temperature": 0, "max_tokens": 42, "stream": True,
                            "mimo_provenance": True})
    tokens = [t for e in raw for c in e["choices"] for t in c.get("mimo", {}).get("tokens", [])]
    # the same request straight into an engine of its own
    engine = Engine(model, tokenizer, num_speculative_tokens=3, speculative_policy="fixed")
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False)
    end = tokenizer.token_to_id("<|im_end|>")
    rid = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=42, stop_token_ids=[end]))
    want = []
    while engine.has_unfinished():
        for d in engine.step():
            want += [[tokenizer.token_bytes(t).decode("utf-8", errors="replace"), p]
                     for t, p in zip(d.token_ids, d.provenance)]
    assert tokens == want
    stats = engine.output(rid).stats
    assert sum(p > 0 for _, p in tokens) == stats.accepted > 0 and {p for _, p in tokens} == {0, 1, 2, 3}


def test_serve_prints_the_chat_pages_url(monkeypatch, capsys):
    import uvicorn

    from mimo.cli.main import main

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.append(sockets[0].getsockname()))
    assert main(["serve", "--port", "0"]) == 0  # the shipped mimo-nano, defaults everywhere but a free port
    (host, port), = served
    assert host == "127.0.0.1" and port > 0
    assert f"open http://127.0.0.1:{port}/ in a browser for the chat page" in capsys.readouterr().out


@pytest.mark.parametrize(("host", "url"), [("0.0.0.0", "http://127.0.0.1:9/"), ("::1", "http://[::1]:9/"),
                                           ("example.lan", "http://example.lan:9/")])
def test_page_url_for_other_binds(host, url):
    from mimo.cli.serve import _page_url

    assert _page_url(host, 9) == url
