"""The server over a model split on 2 ranks: the openai client (plain, streaming, a tool call), and a worker that
dies takes ``mimo serve --tensor-parallel-size 2`` down with an error within seconds instead of hanging it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import openai
import pytest

from mimo import LLM
from mimo.server.app import ServerConfig, build_app
from mimo.server.async_engine import AsyncEngine
from mimo.tokenizer import Tokenizer, train_bpe
from tests.helpers import random_model, tiny_config
from tests.server.conftest import _CORPUS, API_KEY, ScriptedEngine, run_server

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("served")
    tok = Tokenizer(train_bpe(_CORPUS * 3, 300))
    random_model(tiny_config(vocab_size=tok.vocab_size, eos_token_id=0), seed=3).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_openai_client_against_two_ranks(model_dir):
    want = LLM(str(model_dir)).generate("def add(a, b):", _greedy(12))[0].outputs[0].text  # one process
    with LLM(str(model_dir), tensor_parallel_size=2, enable_expert_parallel=True, num_speculative_tokens=2) as llm:
        scripted = ScriptedEngine(llm.engine, llm.tokenizer)  # "[[tool]]" in a prompt scripts a tool call
        aengine = AsyncEngine(scripted, max_waiting=16)
        app = build_app(aengine, llm.tokenizer, "mimo-tp2", api_key=API_KEY, config=ServerConfig())
        try:
            with run_server(app) as url:
                client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
                r = client.completions.create(model="mimo-tp2", prompt="def add(a, b):", max_tokens=12,
                                              temperature=0, extra_body={"ignore_eos": True})
                assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
                assert r.choices[0].text == want  # the same tokens as one process
                chunks = list(client.chat.completions.create(
                    model="mimo-tp2", messages=[{"role": "user", "content": "hello"}], max_tokens=10, stream=True))
                assert chunks[-1].choices[0].finish_reason in ("stop", "length")
                assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                call = client.chat.completions.create(
                    model="mimo-tp2", messages=[{"role": "user", "content": "Weather in Paris? [[tool]]"}],
                    tools=TOOLS)
                assert call.choices[0].finish_reason == "tool_calls"
                assert call.choices[0].message.tool_calls[0].function.name == "get_weather"
        finally:
            aengine.close()


def _greedy(n):
    from mimo import SamplingParams

    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append((int(entry), cmd))
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker through /proc")
def test_a_dead_worker_stops_the_server(model_dir):
    proc = subprocess.Popen([sys.executable, "-m", "mimo", "serve", "--model", str(model_dir), "--port", "0",
                             "--tensor-parallel-size", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "http://" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"the server exited: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "the server did not start"
        workers = [pid for pid, cmd in _children(proc.pid) if "spawn_main" in cmd]
        assert len(workers) == 1, _children(proc.pid)
        os.kill(workers[0], signal.SIGKILL)
        t = time.monotonic()
        code = proc.wait(timeout=30)
        assert time.monotonic() - t < 10
        assert code != 0
        assert "rank 1" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
