"""Speed measurements of the engine: prefill and decode tokens/s, MTP acceptance, cache bytes.

Used by ``mimo bench`` and ``benchmarks/``. Timings are wall-clock on whatever threads torch
uses; nothing here asserts anything about speed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from mimo.engine.engine import Engine
from mimo.engine.params import SamplingParams
from mimo.model.causal_lm import CausalLM


@dataclass
class DecodeResult:
    batch: int
    mtp: int
    tokens: int  # generated tokens after the first (which prefill produces)
    seconds: float
    acceptance_length: float
    cache_bytes_per_request: int
    graphs_compiled: int = 0  # torch.compile graphs built inside the timed region (measure_decode retries)
    policy: str = "fixed"  # the speculation policy (mtp > 0)
    drafted: int = 0  # drafts made, and accepted, over the timed decode
    accepted: int = 0
    drafts_per_step: dict[int, int] = field(default_factory=dict)  # rows' decode steps by drafts made

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


def prompts_for(model: CausalLM, batch: int, length: int, seed: int = 0, source: list[list[int]] | None = None):
    if source:
        return [source[i % len(source)][:length] for i in range(batch)]
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.config.vocab_size, (length,), generator=g, device="cpu").tolist()
            for _ in range(batch)]


@torch.no_grad()
def measure_prefill(model: CausalLM, length: int = 512, repeats: int = 3, chunk: int = 512) -> float:
    """Prompt tokens/s of the engine's prefill (best of ``repeats``)."""
    best = float("inf")
    prompt = prompts_for(model, 1, length)[0]
    for _ in range(repeats):
        eng = Engine(model, max_num_seqs=1, prefill_chunk=chunk, max_model_len=length + 8)
        eng.add_request(prompt, SamplingParams(max_tokens=1, temperature=0))
        t = time.perf_counter()
        while eng.has_unfinished():
            eng.step()
        best = min(best, time.perf_counter() - t)
    return length / best


def prefill_run(eng: Engine, prompt: list[int]) -> float:
    """Prompt tokens/s of one prefill of ``prompt`` on an existing engine (left empty)."""
    rid = eng.add_request(prompt, SamplingParams(max_tokens=1, temperature=0))
    t = time.perf_counter()
    while eng.has_unfinished():
        eng.step()
    dt = time.perf_counter() - t
    eng.release(rid)
    return len(prompt) / dt


@torch.no_grad()
def measure_decode(
    model: CausalLM, batch: int, new_tokens: int, mtp: int = 0, prompt_len: int = 32,
    prompts: list[list[int]] | None = None, compile: bool = False, policy: str = "adaptive",
) -> DecodeResult:
    """Decode tokens/s for a batch of greedy requests, timed from the first generated token on.

    With ``compile``, a first untimed run of the same requests compiles the decode step; should torch.compile
    still build a graph inside the timed run (a shape the first run did not reach), that run is discarded and
    the measurement repeated, so a figure never includes compilation (an error after 3 tries)."""
    eng = Engine(model, num_speculative_tokens=mtp, max_num_seqs=batch, compile=compile, speculative_policy=policy)
    batch_prompts = prompts_for(model, batch, prompt_len, source=prompts)
    # untimed first: warm-up (with compile, every shape the timed run will see; for the adaptive policy, its
    # first measurements of the step times, as a server has them after its first requests)
    decode_run(eng, batch_prompts, new_tokens)
    if not compile:
        return decode_run(eng, batch_prompts, new_tokens)
    for _ in range(3):
        r = decode_run(eng, batch_prompts, new_tokens)
        if r.graphs_compiled == 0:
            return r
    raise RuntimeError(f"torch.compile kept building graphs while decoding batch {batch} (mtp {mtp}): no figure "
                       "free of compilation time")


def decode_run(eng: Engine, prompts: list[list[int]], new_tokens: int) -> DecodeResult:
    """One greedy decode of ``prompts`` as one batch on an existing engine (which is left empty), timed
    from the first generated token on. Reusing one engine keeps its compiled step."""
    ids = [eng.add_request(p, SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True))
           for p in prompts]
    while any(not eng.output(i).outputs[0].token_ids for i in ids):  # prefill, untimed
        eng.step()
    start_tokens = sum(len(eng.output(i).outputs[0].token_ids) for i in ids)
    graphs = _graphs_compiled()
    t = time.perf_counter()
    while eng.has_unfinished():
        eng.step()
    dt = time.perf_counter() - t
    graphs = _graphs_compiled() - graphs
    outs = [eng.output(i) for i in ids]
    tokens = sum(len(o.outputs[0].token_ids) for o in outs) - start_tokens
    al = sum(o.stats.decode_tokens for o in outs) / max(1, sum(o.stats.decode_steps for o in outs))
    hist: dict[int, int] = {}
    for o in outs:
        for k, n in o.stats.drafts_per_step.items():
            hist[k] = hist.get(k, 0) + n
    for i in ids:
        eng.release(i)
    return DecodeResult(len(prompts), eng.k, tokens, dt, al, max(o.cache_bytes for o in outs), graphs,
                        eng.config.speculative_policy, sum(o.stats.drafted for o in outs),
                        sum(o.stats.accepted for o in outs), dict(sorted(hist.items())))


def _graphs_compiled() -> int:
    """How many graphs torch.compile has built in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]
