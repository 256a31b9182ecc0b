"""The engine: a host-only scheduler and a device-side runner, one step at a time.

``Engine.step()`` asks the :class:`~mimo.engine.scheduler.Scheduler` for a plan (admission into free cache
slots, up to ``prefill_chunk`` prompt tokens of prefill, one decode or draft + verify row for every running
sequence that has a token to continue from), has the :class:`~mimo.engine.runner.ModelRunner` execute it on
the model's device, and hands the runner's tokens back to the scheduler, which applies the stop rules and
returns the step's deltas. Requests join and leave between steps.

The engine leaves the model as it was given (training flag, fused projections, attention backend) and sets
nothing process-wide: :class:`mimo.engine.llm.LLM` and the CLI prepare the model and the process.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from typing import Any

from mimo.config import MiMoConfig
from mimo.engine.config import EngineConfig
from mimo.engine.kv_cache import HybridKVCache
from mimo.engine.outputs import RequestOutput, StreamDelta
from mimo.engine.params import SamplingParams
from mimo.engine.policy import PLAIN_SETTLE_STEPS, SpeculationPolicy
from mimo.engine.runner import ModelRunner
from mimo.engine.scheduler import Scheduler
from mimo.engine.structured import Grammars
from mimo.model.causal_lm import CausalLM
from mimo.tokenizer import Tokenizer


def relative_step_cost(model_config: MiMoConfig):
    """The speculation policy's prior: a step of B rows drafting k, in weights read relative to a plain step of B
    rows (``mimo info``'s arithmetic: a verify's B(k+1) tokens touch more experts, and each draft depth runs an
    MTP block and the head for B tokens)."""
    from mimo.model.sizes import parameter_counts, params_read_per_step

    pc = parameter_counts(model_config)

    @functools.cache  # asked several times per step; the arithmetic walks every layer
    def cost(batch: int, k: int) -> float:
        plain = params_read_per_step(model_config, batch)
        return (params_read_per_step(model_config, batch * (k + 1)) + k * (pc.per_mtp_block + pc.lm_head)) / plain

    return cost


def max_model_len(model_config: MiMoConfig, config: EngineConfig) -> int:
    """The context an engine serves: the config's ``max_model_len``, at most the model's."""
    return min(config.max_model_len or model_config.max_position_embeddings, model_config.max_position_embeddings)


class Engine:
    def __init__(
        self,
        model: CausalLM,
        tokenizer: Tokenizer | None = None,
        config: EngineConfig | None = None,
        *,
        eos_token_ids: Iterable[int] = (),
        runner: ModelRunner | None = None,
        **overrides: Any,
    ) -> None:
        """``config`` (or its fields as keywords: ``Engine(model, num_speculative_tokens=3)``) sets the engine;
        ``eos_token_ids`` end a sequence besides config.json's and the tokenizer's (a model directory's
        generation_config.json lists them; :class:`mimo.engine.llm.LLM` reads it). ``runner``: one made for
        this model and config elsewhere (rank 0's of a parallel group, :mod:`mimo.engine.ranks`)."""
        config = config or EngineConfig()
        if overrides:
            unknown = set(overrides) - EngineConfig.fields()
            if unknown:
                raise TypeError(f"unknown engine setting(s): {', '.join(sorted(unknown))}")
            config = config.replace(**overrides)
        cfg = model.config
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len(cfg, config)
        self._own_runner = runner is None
        self.runner = runner or ModelRunner(model, config, self.max_model_len)
        eos = set(cfg.eos_token_ids) | set(eos_token_ids)
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self._last_decode: tuple[tuple[int, ...], int] = ((), 0)  # the last decode step's rows and MTP blocks run
        self._plain_run = 0  # plain decode steps in a row, up to the last one
        self.policy = self._new_policy()
        self.scheduler = Scheduler(
            max_num_seqs=config.max_num_seqs, max_model_len=self.max_model_len, prefill_chunk=config.prefill_chunk,
            num_speculative_tokens=config.num_speculative_tokens, vocab_size=cfg.vocab_size, eos_ids=eos,
            tokenizer=tokenizer, sequence_bytes=self.runner.sequence_bytes, policy=self.policy,
        )

    def _new_policy(self) -> SpeculationPolicy:
        cfg = self.model.config
        return SpeculationPolicy(self.config.num_speculative_tokens, self.config.speculative_policy,
                                 prior_cost=relative_step_cost(cfg), window=cfg.sliding_window)

    def warmup(self, tokens: int = 4) -> None:
        """Run one short greedy request through the paths a request takes (prefill, decode and, on a speculative
        engine, drafting and a verify at full depth), then forget it, the speculation policy's timings included.
        A fresh process's first calls run slow (first-time allocations and code paths: a first 1-draft step took
        4.5 ms where later ones take ~2.3 on mimo-nano), so the first request's steps would cost more than later
        ones and the policy would time them. Entry points call it (`mimo generate`, `mimo serve`); it changes no
        output."""
        if self.has_unfinished():
            raise RuntimeError("warmup() needs an idle engine")
        if self.config.num_speculative_tokens:  # full depth at every step, so every block runs
            self.policy = self.scheduler.policy = SpeculationPolicy(self.config.num_speculative_tokens, "fixed")
        vocab = self.model.config.vocab_size
        rid = self.add_request([i % vocab for i in range(1, 5)],
                               SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True), request_id="warmup")
        try:
            while self.has_unfinished():
                self.step()
        finally:
            self.release(rid)
            self.policy = self.scheduler.policy = self._new_policy()
            self._last_decode, self._plain_run = ((), 0), 0

    # ------------------------------------------------------------------ requests
    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        """Queue a request (``params.n`` samples of it). Bad input raises ``ValueError``; nothing is queued."""
        if params is not None and params.structured_outputs is not None:
            self.grammars().compile(params.structured_outputs)  # a bad schema or grammar: ValueError, nothing queued
        return self.scheduler.add_request(prompt, params, request_id)

    @property
    def can_constrain(self) -> bool:
        """Whether this engine can take structured outputs: it has a tokenizer and runs its own runner (a parallel
        group's ranks would each need the matchers: not supported yet)."""
        return self.tokenizer is not None and self._own_runner

    def grammars(self) -> Grammars:
        """The compiler of structured-output constraints for this engine's tokenizer, made on first use (it imports
        xgrammar, a few seconds); a server that constrains tool calls makes it at start."""
        if self.runner.grammars is None:
            if not self.can_constrain:
                raise ValueError("structured outputs need the engine's tokenizer (the grammar is over its tokens)"
                                 if self.tokenizer is None else
                                 "structured outputs are not supported on a parallel engine yet")
            assert self.tokenizer is not None
            self.runner.grammars = Grammars(self.tokenizer, self.model.config.vocab_size, self.eos_ids)
        return self.runner.grammars

    def abort(self, request_id: str) -> bool:
        """Cancel a request wherever it is; its cache slot is free for the next step."""
        return self.scheduler.abort(request_id)

    def release(self, request_id: str) -> None:
        """Forget a request (aborting it if it still runs)."""
        self.scheduler.release(request_id)

    def output(self, request_id: str) -> RequestOutput:
        return self.scheduler.output(request_id)

    def prefill_progress(self, request_id: str) -> tuple[int, int]:
        """(prompt tokens in the cache, prompt tokens) of a request's first sample."""
        return self.scheduler.prefill_progress(request_id)

    # ------------------------------------------------------------------ the step
    def step(self) -> list[StreamDelta]:
        t = time.perf_counter()
        plan = self.scheduler.schedule()
        if plan.is_empty():
            return []
        results = self.runner.execute(plan)
        deltas = self.scheduler.update(plan, results)
        if plan.decode:  # a decode step's cost, for the speculation policy: all of it, host work included
            # (detokenising and stop checks grow with the tokens a step emits)
            rows, k = tuple(r.slot for r in plan.decode), max(r.drafts for r in plan.decode)
            # the drafts the step verified: fewer than planned where unsure drafts were cut; the blocks that ran:
            # those, and the cut draft's (it was made, found unsure and dropped)
            made = max((results[s].drafted for s in rows if s in results), default=0)
            ran = k if made == k else made + 1
            # steady: every MTP block this step ran also ran in the step before, for the same rows; otherwise
            # it had positions to catch up on, a one-off cost that is not the cost of drafting k. A plain step
            # is steady after PLAIN_SETTLE_STEPS plain steps: the first ones after drafting are slower, and the
            # plain step's time is what every other cost is measured against. A steady step that cut its
            # drafts is timed as a step of k all the same: it is what choosing k costs, as a cut counts as that
            # depth's rejection (SpeculationPolicy.observe_row). Left untimed, a k timed once on a fast step kept
            # being chosen with every draft cut and never re-timed (MTP blocks that draft noise)
            last_rows, last_ran = self._last_decode
            decode_only = not plan.prefill and not plan.starts and not plan.moves
            plain_before = self._plain_run  # (0 after a drafting step)
            self._plain_run = plain_before + 1 if k == 0 else 0
            if decode_only and last_rows == rows and (plain_before >= PLAIN_SETTLE_STEPS if k == 0 else last_ran >= ran):
                self.policy.observe_step(len(rows), k, time.perf_counter() - t)
            elif decode_only and k:  # blocks caught up: its cost, beyond a steady step of the drafts it verified (where
                # every row's draft was unsure and cut, a plain step: drafts that are always cut must not leave the
                # catch-up unpriced, or explorations that only catch up would never be found dear)
                self.policy.observe_catchup(len(rows), made, time.perf_counter() - t, blocks=ran)
            self._last_decode = (rows, ran)
        return deltas

    def speculation_stats(self) -> dict:
        """The speculation policy's aggregate figures: steps per chosen k, predicted vs realised tokens per step."""
        return {"policy": self.config.speculative_policy, **self.policy.stats.as_dict()}

    # ------------------------------------------------------------------ state
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def cache_bytes_in_use(self) -> int:
        return self.scheduler.cache_bytes_in_use()

    @property
    def cache(self) -> HybridKVCache:
        return self.runner.cache

    @property
    def k(self) -> int:
        return self.config.num_speculative_tokens

    @property
    def max_num_seqs(self) -> int:
        return self.config.max_num_seqs

    @property
    def prefill_chunk(self) -> int:
        return self.config.prefill_chunk

    @property
    def eos_ids(self) -> set[int]:
        return self.scheduler.eos_ids

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size
