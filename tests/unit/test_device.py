"""Every tensor the engine, the model, the cache, the sampler, drafting and training make is made on the
device of the weights it works with (or explicitly on the host). The CPU-only proof: run them with
``torch.set_default_device("meta")`` in force while the model lives on the CPU, so that any tensor made
without a device lands on ``meta`` and the first operation mixing it with real ones fails loudly."""

from __future__ import annotations

import contextlib

import pytest
import torch

from mimo import LLM, SamplingParams
from mimo.engine.engine import Engine
from mimo.training.trainer import TrainConfig, train
from tests.helpers import random_model, tiny_config

PROMPTS = [[5, 6, 7], [i % 120 for i in range(10, 150)]]  # the second crosses the sliding window (5) and prefill chunk (64)


@contextlib.contextmanager
def default_device_meta():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(sliding_window=5), seed=7)


def _run(model, k, params):
    # fixed: seeded draws depend on the drafts made per step, which the adaptive policy times on the wall clock
    return [o.outputs[0].token_ids for o in LLM(model, num_speculative_tokens=k, prefill_chunk=64,
                                                 speculative_policy="fixed").generate(PROMPTS, params)]


@pytest.mark.parametrize("params", [SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
                                    SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=3, max_tokens=20,
                                                   ignore_eos=True, repetition_penalty=1.1, logprobs=2)],
                         ids=["greedy", "seeded sampling with penalties"])
def test_generation_assumes_no_default_device(model, params):
    want = {k: _run(model, k, params) for k in (0, 3)}
    with default_device_meta():
        got = {k: _run(model, k, params) for k in (0, 3)}
    assert got == want
    if params.temperature == 0:
        assert got[0] == got[3]  # speculative greedy is plain greedy


def test_engine_and_cache_are_made_on_the_weights_device(model):
    with default_device_meta():
        eng = Engine(model, num_speculative_tokens=2)
        assert eng.cache.device.type == "cpu" and all(r.k.device.type == "cpu" for r in eng.cache.rings.values())


def test_training_assumes_no_default_device(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"m{i}.py").write_text("".join(f"def f{j}(x):\n    return x * {j} + {i}\n" for j in range(40)))
    cfg = TrainConfig(preset="tiny", out=str(tmp_path / "run"), seq_len=16, batch_size=2, steps=3, vocab_size=300,
                      data_root=str(corpus), heldout_percent=30, eval_interval=3, eval_batches=1, progress=False)
    with default_device_meta():
        summary = train(cfg)
    assert summary["step"] == 3 and summary["heldout"]["heldout_loss"] > 0
