"""Fixtures for the chat page tests: Debian's Chromium driven by Playwright, and real servers on loopback.

The browser is the distribution's ``chromium`` (``scripts/test.sh`` installs it with apt-get); Playwright
never downloads one. Without a Chromium binary or the ``playwright`` package these tests skip, saying why.

The servers run the real engine on tiny models, wrapped by :class:`PageEngine` (the scripting engine of
``tests/server/conftest.py`` plus replies the page tests need, a pace for scripted replies, and a record of
what the engine streamed for each request).
"""

from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from mimo.engine.engine import Engine
from mimo.server.app import ServerConfig, build_app
from mimo.server.async_engine import AsyncEngine
from tests.helpers import oracle_model, random_model, tiny_config
from tests.server import conftest as server_conftest
from tests.server.conftest import ScriptedEngine, run_server

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODEL = "mimo-page-test"
# Not a plain token: the page must send the key exactly as typed (a space, punctuation and a Latin-1 letter).
PAGE_KEY = "s3cret kéy/+=:~!"
XSS = '<script>window.__pwned=1</script> <img src=x onerror="window.__pwned=1"> [click](javascript:window.__pwned=1)'
XSS_TOOL = ("<tool_call>\n<function=get_weather>\n<parameter=city><img src=x onerror=\"window.__pwned=1\">"
            "<script>window.__pwned=1</script></parameter>\n</function>\n</tool_call>")
PAGE_SCRIPTS = {
    "[[xss]]": f"<think>\n{XSS}\n</think>\n\n{XSS}",
    "[[xsstool]]": XSS_TOOL,
    "[[long]]": "and on " * 1500,  # paced: far longer than any test waits
}


tokenizer = server_conftest.tokenizer  # the server tests' session fixture: one tokenizer for both


def chromium_path() -> str | None:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.path.exists(path) else None


class PageEngine(ScriptedEngine):
    """:class:`ScriptedEngine` with the page tests' replies; scripted replies stream one token per ``pace``
    seconds (so a test can act mid-reply), and every request's streamed tokens, provenance and final
    output are kept (``order``: request ids as they arrived)."""

    def __init__(self, inner: Engine, tokenizer, pace: float = 0.01) -> None:
        super().__init__(inner, tokenizer)
        self.scripts.update(PAGE_SCRIPTS)
        self.pace = pace
        self.order: list[str] = []
        self.streamed: dict[str, list[tuple[int, int]]] = defaultdict(list)  # request id -> [(token, provenance)]
        self.outputs: dict = {}

    def add_request(self, prompt, params, request_id=None):
        rid = super().add_request(prompt, params, request_id)
        self.order.append(rid)
        return rid

    def step(self):
        if any(s.finish_reason is None for s in self.scripted.values()):
            time.sleep(self.pace)
        deltas = super().step()
        for d in deltas:
            self.streamed[d.request_id] += zip(d.token_ids, d.provenance or [0] * len(d.token_ids))
        return deltas

    def output(self, request_id):
        out = super().output(request_id)
        self.outputs[request_id] = out
        return out


# Module scope: while Playwright's sync API is open it marks an event loop running on this thread, and the
# asyncio.run() of later test modules would fail.
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package "
                                   "(pip install -e '.[dev]')")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium binary: install Debian's chromium (apt-get install chromium; scripts/test.sh does)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    """A fresh tab (own context: no shared memory); fails the test on a script error or a CSP violation."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    tab.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    yield tab
    context.close()
    assert not problems, problems


def _serve(tokenizer, inner: Engine, api_key: str | None):
    engine = PageEngine(inner, tokenizer)
    aengine = AsyncEngine(engine)
    config = ServerConfig().with_sampling_defaults({"temperature": 0.7, "top_p": 0.95})
    app = build_app(aengine, tokenizer, MODEL, api_key=api_key, config=config)
    return engine, aengine, app


@pytest.fixture(scope="module")
def chat_server(tokenizer):
    """No API key; the real engine with 3 MTP drafts on a model whose drafts are right for some tokens only."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = oracle_model(tiny_config(vocab_size=tokenizer.vocab_size, eos_token_id=0), seed=6,
                         draft_noise=(0.02, 0.04, 0.06))
    # fixed: every step drafts 3, so a reply shows drafts accepted at every depth (the adaptive policy could
    # choose fewer on this machine's timings)
    engine, aengine, app = _serve(tokenizer, Engine(model, tokenizer, num_speculative_tokens=3,
                                                    speculative_policy="fixed"), None)
    try:
        with run_server(app) as url:
            yield SimpleNamespace(url=url, engine=engine, aengine=aengine, tokenizer=tokenizer)
    finally:
        aengine.close()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def key_server(tokenizer):
    """Needs ``PAGE_KEY``; a random tiny model without speculation."""
    model = random_model(tiny_config(vocab_size=tokenizer.vocab_size, eos_token_id=0), seed=3)
    engine, aengine, app = _serve(tokenizer, Engine(model, tokenizer), PAGE_KEY)
    try:
        with run_server(app) as url:
            yield SimpleNamespace(url=url, engine=engine, aengine=aengine, tokenizer=tokenizer)
    finally:
        aengine.close()
