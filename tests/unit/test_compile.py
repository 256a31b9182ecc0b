"""The compiled decode (``Engine(compile=True)``: torch.compile / inductor) computes what eager does.

Greedy output token for token over a run that grows the full-attention pools past their first
capacity (which must not recompile), for a batch of different lengths, plain and speculative.
"""

import torch
from torch._dynamo.utils import counters

from mimo import LLM, SamplingParams
from tests.helpers import random_model, tiny_config


def test_compiled_decode_equals_eager_and_survives_cache_growth():
    model = random_model(tiny_config(sliding_window=5, num_hidden_layers=4), seed=3)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 128, (n,), generator=g).tolist() for n in (3, 17)]
    params = SamplingParams(temperature=0, max_tokens=300, ignore_eos=True)  # 17 + 300 > 256: the pools grow
    eager = [o.outputs[0].token_ids for o in LLM(model).generate(prompts, params)]
    llm = LLM(model, compile=True)
    outs = llm.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in outs] == eager
    # growth made the capacity a symbol instead of a recompile: a second run builds no graph
    graphs = counters["stats"]["unique_graphs"]
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, params)] == eager
    assert counters["stats"]["unique_graphs"] == graphs
    spec = LLM(model, num_speculative_tokens=2, compile=True).generate(
        prompts, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in spec] == [e[:40] for e in eager]


def test_compiled_decode_sees_weights_changed_in_place():
    """The compiled step keeps no guard on module attributes (runner.py): weights are its inputs, so new values
    written into them in place (as a trainer's rollouts do) are what the next step computes with."""
    model = random_model(tiny_config(sliding_window=5, num_hidden_layers=2), seed=4)
    prompts = [[5, 6, 7, 8]]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    llm = LLM(model, compile=True)
    before = llm.generate(prompts, params)[0].outputs[0].token_ids
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.5)
    eager = LLM(model).generate(prompts, params)[0].outputs[0].token_ids
    assert eager != before  # the change matters
    assert llm.generate(prompts, params)[0].outputs[0].token_ids == eager


def test_two_compiled_models_in_one_process_keep_their_own_graphs():
    """Without guards on the modules, one model's graph would serve another of the same class: each runner
    compiles its own copy of the code. Two models of different shapes and dtypes, compiled one after the other
    (as a benchmark of several formats does), each decode what their eager selves do."""
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    models = [random_model(tiny_config(num_hidden_layers=2), seed=5),
              random_model(tiny_config(num_hidden_layers=2), seed=6).to(torch.bfloat16),
              random_model(tiny_config(num_hidden_layers=3, hidden_size=48), seed=7)]
    compiled = [LLM(m, compile=True) for m in models]
    for m, llm in zip(models, compiled):
        eager = LLM(m).generate([[3, 4, 5]], params)[0].outputs[0].token_ids
        assert llm.generate([[3, 4, 5]], params)[0].outputs[0].token_ids == eager
