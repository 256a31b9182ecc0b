"""Issue #10's server edges: a huge prompt never stalls other streams, admission matches its settings, and the
defaults come from the model's files (generation_config, the chat template's own thinking default)."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import httpx
import pytest

from mimo.checkpoint import GenerationConfig
from mimo.engine.engine import Engine
from mimo.engine.outputs import CompletionOutput, RequestOutput, SpecStats, StreamDelta
from mimo.server.app import ServerConfig, build_app
from mimo.server.async_engine import AsyncEngine
from mimo.server.chat import render_prompt
from mimo.server.protocol import ChatCompletionRequest
from mimo.tokenizer import Tokenizer
from tests.helpers import random_model, tiny_config
from tests.server.conftest import MODEL, run_server

BIG_BODY = 4 * 1024 * 1024


class TickingEngine:
    """Emits one token per running request every few milliseconds; takes prompts of any length."""

    max_num_seqs, k = 8, 0

    def __init__(self, tokenizer: Tokenizer, max_model_len: int, tick_s: float = 0.005) -> None:
        self.tok, self.max_model_len, self.tick_s = tokenizer, max_model_len, tick_s
        self.vocab_size = tokenizer.vocab_size
        self.reqs: dict[str, dict] = {}
        self.token = tokenizer.encode(" a")[0]

    def add_request(self, prompt, params, request_id=None):
        ids = prompt if isinstance(prompt, list) else self.tok.encode(prompt)
        self.reqs[request_id] = {"ids": ids, "left": params.max_tokens, "out": [], "reason": None}
        return request_id

    def step(self):
        time.sleep(self.tick_s)
        deltas = []
        for rid, r in self.reqs.items():
            if r["reason"] is None:
                r["out"].append(self.token)
                r["left"] -= 1
                r["reason"] = "length" if r["left"] == 0 else None
                deltas.append(StreamDelta(rid, " a", [self.token], 0, r["reason"]))
        return deltas

    def abort(self, rid):
        r = self.reqs.get(rid)
        if r is not None and r["reason"] is None:
            r["reason"] = "abort"
        return r is not None

    def release(self, rid):
        self.reqs.pop(rid, None)

    def output(self, rid):
        r = self.reqs[rid]
        return RequestOutput(rid, None, r["ids"], [CompletionOutput(0, "", r["out"], r["reason"])],
                             r["reason"] is not None, SpecStats())

    def has_unfinished(self):
        return any(r["reason"] is None for r in self.reqs.values())

    @property
    def num_running(self):
        return sum(r["reason"] is None for r in self.reqs.values())

    num_waiting = 0

    def cache_bytes_in_use(self):
        return 0


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


async def _gaps_while(url: str, huge_body: dict) -> tuple[float, list[int]]:
    """The longest pause between a stream's chunks while huge requests are in flight, and their statuses."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        stamps: list[float] = []

        async def stream() -> None:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 400, "stream": True}
            async with c.stream("POST", "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        stamps.append(time.monotonic())

        task = asyncio.create_task(stream())
        while len(stamps) < 5:
            await asyncio.sleep(0.01)
        statuses = [(await c.post("/v1/chat/completions", json=huge_body)).status_code for _ in range(3)]
        await task
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return max(gaps), statuses


def test_a_huge_prompt_does_not_stall_other_streams(tokenizer):
    """A ~3.9 MB prompt is rendered and tokenised off the event loop (tokenising it takes seconds)."""
    engine = AsyncEngine(TickingEngine(tokenizer, max_model_len=10**8))
    huge = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "word " * 780_000}]}
    try:
        with run_server(build_app(engine, tokenizer, MODEL, config=ServerConfig(max_body_bytes=BIG_BODY))) as url:
            worst, statuses = asyncio.run(_gaps_while(url, huge))
    finally:
        engine.close()
    assert statuses == [200, 200, 200]
    assert worst < 0.3, f"a stream paused {worst:.2f} s while a huge prompt was tokenised"


def test_a_prompt_longer_than_the_context_is_refused_before_tokenising(tokenizer):
    """A bound from the longest token's bytes refuses it at once: no seconds of encoding, no memory kept."""
    engine = AsyncEngine(TickingEngine(tokenizer, max_model_len=4096))
    huge = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "word " * 780_000}]}
    try:
        with run_server(build_app(engine, tokenizer, MODEL, config=ServerConfig(max_body_bytes=BIG_BODY))) as url:
            before = _rss()
            t0 = time.monotonic()
            worst, statuses = asyncio.run(_gaps_while(url, huge))
            took = time.monotonic() - t0
            grew = _rss() - before
            r = httpx.post(f"{url}/v1/chat/completions", json=huge, timeout=30)
    finally:
        engine.close()
    assert statuses == [400, 400, 400] and worst < 0.3
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages" and "at least" in err["message"]
    assert took < 10 and grew < 200 * 2**20, (took, grew)


def test_thinking_is_left_to_the_template_unless_the_request_sets_it(tokenizer):
    on_by_default = ("{%- for m in messages %}{{ m.content }}{% endfor -%}"
                     "{%- if enable_thinking is not defined or enable_thinking %}<think>{% endif -%}")
    ctx = SimpleNamespace(tokenizer=Tokenizer(tokenizer.backend, chat_template=on_by_default))
    msgs = [{"role": "user", "content": "hi"}]
    assert render_prompt(ctx, ChatCompletionRequest(messages=msgs)) == "hi<think>"
    off = ChatCompletionRequest(messages=msgs, chat_template_kwargs={"enable_thinking": False})
    assert render_prompt(ctx, off) == "hi"
    mimo_ctx = SimpleNamespace(tokenizer=tokenizer)  # mimo's own template: off unless asked
    assert render_prompt(mimo_ctx, ChatCompletionRequest(messages=msgs)).endswith("<think></think>")


@pytest.fixture(scope="module")
def small_server(tokenizer):
    """A real tiny engine with one slot and two waiting places; chat capped by generation_config's 5 tokens."""
    model = random_model(tiny_config(vocab_size=tokenizer.vocab_size, eos_token_id=0), seed=3)
    engine = AsyncEngine(Engine(model, tokenizer, max_num_seqs=1, max_model_len=512), max_waiting=2)
    config = ServerConfig.from_generation_config(GenerationConfig({}, (), 5))
    try:
        with run_server(build_app(engine, tokenizer, MODEL, config=config)) as url:
            yield SimpleNamespace(url=url, engine=engine)
    finally:
        engine.close()


def test_max_new_tokens_caps_chat_without_max_tokens(small_server):
    r = httpx.post(f"{small_server.url}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "ignore_eos": True})
    body = r.json()
    assert r.status_code == 200 and body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["finish_reason"] == "length"
    assert "tool_calls" not in body["choices"][0]["message"]  # omitted, not [], when there are none


def test_admission_matches_max_num_seqs_and_max_waiting(small_server):
    """One slot + two waiting places: three concurrent requests are taken, the fourth is a 503 with Retry-After."""
    async def go():
        async with httpx.AsyncClient(base_url=small_server.url, timeout=120) as c:
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 60, "ignore_eos": True}
            taken = [asyncio.create_task(c.post("/v1/completions", json=body)) for _ in range(3)]
            while small_server.engine.stats()["in_flight"] < 3:
                await asyncio.sleep(0.01)
            fourth = await c.post("/v1/completions", json=body)
            return fourth, [await t for t in taken]

    fourth, taken = asyncio.run(go())
    assert [r.status_code for r in taken] == [200, 200, 200]
    assert fourth.status_code == 503 and fourth.json()["error"]["code"] == "queue_full"
    assert fourth.headers["Retry-After"] == "1"


def test_validation_errors_count_as_rejected_and_content_type_is_checked(small_server):
    def rejected() -> float:
        return small_server.engine.metrics.requests.value(status="rejected")

    before = rejected()
    bad = httpx.post(f"{small_server.url}/v1/completions", json={"prompt": "x", "stream": "yes"})
    assert bad.status_code == 400 and rejected() == before + 1
    body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 1})
    plain = httpx.post(f"{small_server.url}/v1/completions", content=body, headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and "application/json" in plain.json()["error"]["message"]
    assert rejected() == before + 2
    ok = httpx.post(f"{small_server.url}/v1/completions", content=body,
                    headers={"Content-Type": "application/json; charset=utf-8"}, timeout=60)
    assert ok.status_code == 200 and rejected() == before + 2
