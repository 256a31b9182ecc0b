"""Fixtures for the server tests: a tiny random model and BPE, a scripting engine wrapper, a real uvicorn server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import openai
import pytest
import torch
import uvicorn

from mimo.engine.engine import Engine
from mimo.engine.outputs import CompletionOutput, RequestOutput, SpecStats, StreamDelta
from mimo.server.app import ServerConfig, build_app
from mimo.server.async_engine import AsyncEngine
from mimo.tokenizer import Tokenizer, train_bpe
from tests.helpers import random_model, tiny_config

API_KEY = "sk-test-key"
MODEL = "mimo-test"
MAX_MODEL_LEN = 1024
MAX_BODY = 64 * 1024

TOOL_XML = "<tool_call>\n<function=get_weather>\n<parameter=city>Paris</parameter>\n</function>\n</tool_call>"
# The reply chosen by a marker in the last user turn; a tool response in that turn gets ANSWER.
SCRIPTS = {
    "[[tool]]": TOOL_XML,
    "[[think]]": "<think>\nThe user wants 2 + 2.\n</think>\n\nThe answer is 4.",
    "[[badtool]]": "Let me try. <tool_call>\n<function=no_such_tool>\n</function>\n</tool_call> and <tool_call><function=",
}
ANSWER = "It is sunny in Paris."
CRASH = "[[crash]]"

_CORPUS = [
    "hello world, the weather is sunny in Paris today.",
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "What is the weather like? It is raining in London and sunny in Rome.",
    "import os\nprint(os.getcwd())\n",
    "<tool_call>\n<function=get_weather>\n<parameter=city>\n",
]


@dataclass
class _Scripted:
    prompt_ids: list[int]
    left: deque[int]
    out: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None


class ScriptedEngine:
    """The real engine, except that a prompt whose last user turn holds a ``[[marker]]`` gets a scripted reply.

    The reply streams one token per step alongside the real engine's batch, so tool calls and reasoning go
    through the same streaming path as generated text. ``[[crash]]`` makes the next step raise.
    """

    def __init__(self, inner: Engine, tokenizer: Tokenizer) -> None:
        self.inner, self.tok = inner, tokenizer
        self.scripted: dict[str, _Scripted] = {}
        self.prompts: list[str] = []  # rendered prompts of scripted requests
        self.crash = False
        self.end = tokenizer.token_to_id("<|im_end|>")
        self.scripts = dict(SCRIPTS)  # marker -> reply; subclasses add their own

    @property
    def max_model_len(self) -> int:
        return self.inner.max_model_len

    @property
    def k(self) -> int:
        return self.inner.k

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    @property
    def max_num_seqs(self) -> int:
        return self.inner.max_num_seqs

    def add_request(self, prompt, params, request_id=None):
        text = self.tok.decode(prompt) if isinstance(prompt, list) else prompt
        turn = text.rsplit("<|im_start|>user", 1)[-1]
        if "<tool_response>" in turn and self.prompts:
            reply = ANSWER
        else:
            reply = next((r for m, r in self.scripts.items() if m in turn), None)
        if CRASH in turn:
            self.crash, reply = True, "never sent"
        if reply is None:
            return self.inner.add_request(prompt, params, request_id)
        self.prompts.append(text)
        ids = prompt if isinstance(prompt, list) else self.tok.encode(prompt)
        self.scripted[request_id] = _Scripted(list(ids), deque(self.tok.encode(reply) + [self.end]))
        return request_id

    def step(self) -> list[StreamDelta]:
        if self.crash:
            self.crash = False
            raise RuntimeError("injected engine failure")
        deltas = self.inner.step() if self.inner.has_unfinished() else []
        for rid, s in self.scripted.items():
            if s.finish_reason is None:
                t = s.left.popleft()
                s.out.append(t)
                piece = self.tok.decode([t])
                s.text += piece
                if not s.left:
                    s.finish_reason = "stop"
                deltas.append(StreamDelta(rid, piece, [t], 0, s.finish_reason, t if s.finish_reason else None))
        return deltas

    def abort(self, request_id: str) -> bool:
        s = self.scripted.get(request_id)
        if s is None:
            return self.inner.abort(request_id)
        if s.finish_reason is None:
            s.finish_reason = "abort"
        return True

    def release(self, request_id: str) -> None:
        if self.scripted.pop(request_id, None) is None:
            self.inner.release(request_id)

    def output(self, request_id: str) -> RequestOutput:
        s = self.scripted.get(request_id)
        if s is None:
            return self.inner.output(request_id)
        out = CompletionOutput(0, s.text, list(s.out), s.finish_reason)
        return RequestOutput(request_id, None, s.prompt_ids, [out], s.finish_reason is not None, SpecStats())

    def has_unfinished(self) -> bool:
        return self.inner.has_unfinished() or any(s.finish_reason is None for s in self.scripted.values())

    @property
    def num_running(self) -> int:
        return self.inner.num_running + sum(s.finish_reason is None for s in self.scripted.values())

    @property
    def num_waiting(self) -> int:
        return self.inner.num_waiting

    def cache_bytes_in_use(self) -> int:
        return self.inner.cache_bytes_in_use()


class StalledEngine:
    """Admits requests and never schedules them (fills the waiting queue)."""

    max_model_len, k, num_running = 64, 0, 0
    num_waiting = property(lambda self: len(self.ids))

    def __init__(self):
        self.ids = set()

    def add_request(self, prompt, params, request_id=None):
        self.ids.add(request_id)
        return request_id

    def step(self):
        time.sleep(0.01)
        return []

    def abort(self, rid):
        return rid in self.ids

    def release(self, rid):
        self.ids.discard(rid)

    def has_unfinished(self):
        return bool(self.ids)

    def cache_bytes_in_use(self):
        return 0


@contextlib.contextmanager
def run_server(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a background thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound here, so no other process can take the port before uvicorn listens
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer(train_bpe(_CORPUS * 3, 300))


@pytest.fixture(scope="module")
def server(tokenizer):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; one thread is plenty for this model
    model = random_model(tiny_config(vocab_size=tokenizer.vocab_size, eos_token_id=0), seed=3)
    inner = Engine(model, tokenizer, max_num_seqs=32, max_model_len=MAX_MODEL_LEN)
    scripted = ScriptedEngine(inner, tokenizer)
    aengine = AsyncEngine(scripted, max_waiting=512)
    app = build_app(aengine, tokenizer, MODEL, api_key=API_KEY, config=ServerConfig(max_body_bytes=MAX_BODY))
    try:
        with run_server(app) as url:
            yield SimpleNamespace(url=url, aengine=aengine, scripted=scripted, engine=inner, tokenizer=tokenizer)
    finally:
        aengine.close()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
