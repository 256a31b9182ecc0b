"""The device side of the engine: the model, its KV cache and compiled step, and the execution of a plan.

A :class:`ModelRunner` owns everything that lives on the model's device: the model, the
:class:`~mimo.engine.kv_cache.HybridKVCache`, the compiled decode step, each slot's random generator and MTP
drafting state. :meth:`ModelRunner.execute` runs one :class:`~mimo.engine.plan.StepPlan` (prefill chunks,
then a plain decode or an MTP draft + verify step) and returns each sampled slot's tokens. It keeps no
request bookkeeping: that is the scheduler's, so a runner can be replicated, one per rank, over a plan
broadcast to all of them. Every tensor it makes is made on the model's device; host data (token ids,
positions) arrives as Python lists and crosses once per step.

Sampling (:mod:`mimo.engine.sampling`) happens here, on the device: prefill's first token, plain decode,
drafting between depths, and the rejection sampling of a verify step.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch

from mimo.config import MiMoConfig
from mimo.engine.config import EngineConfig
from mimo.engine.kv_cache import HybridKVCache
from mimo.engine.plan import DecodeRow, RowResult, StepPlan
from mimo.engine.policy import DRAFT_CONFIDENCE_FLOOR
from mimo.engine.routing import RoutingRecorder
from mimo.engine.sampling import SamplingBatch, greedy_verify, rejection_sample, token_logprobs
from mimo.engine.speculative import MTPState, draft, reach, start_chain
from mimo.engine.structured import Grammars, Matcher
from mimo.model.causal_lm import CausalLM
from mimo.ops import kernels


def check_speculation(config: MiMoConfig, k: int) -> None:
    if k > config.num_mtp_layers:
        raise ValueError(
            f"num_speculative_tokens={k} needs {k} MTP block(s), but this checkpoint has {config.num_mtp_layers}"
            + (" (no model.mtp.* weights)" if config.num_mtp_layers == 0 else "")
        )


class ModelRunner:
    def __init__(self, model: CausalLM, config: EngineConfig, max_model_len: int) -> None:
        cfg = model.config
        check_speculation(cfg, config.num_speculative_tokens)
        self.model = model
        self.config = config
        self.k = k = config.num_speculative_tokens
        self.device, self.dtype = model.device, model.dtype
        if config.cpu_kernels and self.device.type == "cpu" and self.dtype in kernels.DTYPES:
            # mimo's decode kernels, built (once per machine) or loaded now rather than in the first step: the
            # choice is fixed before a compiled step is traced, and a build's notice comes before any output.
            kernels.load()
        # Decode and verify steps through torch.compile (inductor); prefill and MTP drafting stay eager. The
        # C++ wrapper calls a step's kernels without Python in between (benchmarks/README.md has the gain). No
        # guards on the modules: checking them every step costs a tenth of a small model's decode, and nothing
        # changes a module after the model is prepared for inference (weights are the graph's inputs, so values
        # written into them in place are seen). Without them a graph would also serve any other model of the same
        # class (dynamo keeps graphs per code object), so each runner compiles its own copy of the code.
        self._compiled_trunk = torch.compile(_own_code(model.trunk), options={
            "cpp_wrapper": True, "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe,
        }) if config.compile else None
        self._has_moe = any(cfg.is_moe(i) for i in range(cfg.num_hidden_layers))
        self.cache = HybridKVCache(cfg, config.max_num_seqs, max_model_len + k + 1, lookahead=k + 1, dtype=self.dtype,
                                   dynamic_capacity=config.compile, device=self.device, kv_heads=model.kv_heads())
        self.generators: list[torch.Generator | None] = [None] * config.max_num_seqs
        self.mtp: list[MTPState | None] = [None] * config.max_num_seqs
        self._reach = reach(1, k, self.cache.window) if k else 0  # how far back block 1 ever reads
        # set by a caller that wants each sample's expert choices (rollout routing replay); None records nothing
        self.routing: RoutingRecorder | None = None
        # set by the engine when a request is constrained (structured outputs); each such slot's grammar state
        self.grammars: Grammars | None = None
        self.matchers: list[Matcher | None] = [None] * config.max_num_seqs

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def execute(self, plan: StepPlan) -> dict[int, RowResult]:
        for src, dst, length in plan.moves:
            self.cache.move(src, dst, length)
            self.generators[dst], self.mtp[dst] = self.generators[src], self.mtp[src]
            self.matchers[dst], self.matchers[src] = self.matchers[src], None
            self.generators[src] = self.mtp[src] = None
            if self.routing is not None:
                self.routing.move(src, dst)
        for start in plan.starts:
            if self.routing is not None:
                self.routing.start(start.slot, start.seed)
            self.cache.reset(start.slot)
            self.mtp[start.slot] = self.matchers[start.slot] = None
            self.generators[start.slot] = (None if start.seed is None else
                                           torch.Generator(device=self.device).manual_seed(start.seed % 2**64))
        results: dict[int, RowResult] = {}
        if plan.prefill:
            results.update(self._prefill(plan))
        if plan.decode:
            if any(r.drafts for r in plan.decode):
                results.update(self._speculative(plan, plan.decode))
            else:
                results.update(self._decode(plan, plan.decode))
        return results

    def _sampling(self, plan: StepPlan, slots: list[int]) -> SamplingBatch:
        hist = [plan.histories.get(s, ([], [])) for s in slots]
        return SamplingBatch([plan.params[s] for s in slots], [self.generators[s] for s in slots], self.device, hist)

    def _constrained(self, plan: StepPlan, slots: list[int], logits: torch.Tensor,
                     drafts: list[list[int]] | None = None) -> torch.Tensor:
        """``logits`` of ``slots`` (``[B, V]``, or a verify step's ``[B, K+1, V]`` with each row's kept ``drafts``)
        with each constrained row masked by its grammar, position by position after the drafts before it: a copy
        (the raw logits stay for the logprobs), or ``logits`` itself when no row is constrained."""
        rows = [(j, m, drafts[j] if drafts else []) for j, m in enumerate(self._matchers(plan, slots)) if m is not None]
        if not rows:
            return logits
        masked = logits.float().clone(memory_format=torch.contiguous_format)  # masked in place, fp32
        self.grammars.mask_(masked if drafts else masked[:, None], rows)  # type: ignore[union-attr]
        return masked

    def _matchers(self, plan: StepPlan, slots: list[int]) -> list[Matcher | None]:
        """Each slot's grammar state (made at its first sampling), None where its request is not constrained."""
        out: list[Matcher | None] = []
        for slot in slots:
            spec = plan.params[slot].structured_outputs
            if spec is not None and self.matchers[slot] is None:
                if self.grammars is None:
                    raise RuntimeError("a constrained request reached a runner without grammars (Engine sets them)")
                self.matchers[slot] = self.grammars.matcher(spec, plan.params[slot].stop_token_ids)
            out.append(self.matchers[slot] if spec is not None else None)
        return out

    def _accept(self, slot: int, tokens: list[int]) -> None:
        """Advance a constrained slot's grammar over the tokens it produced."""
        m = self.matchers[slot]
        if m is not None:
            for t in tokens:
                if not m.accept(t):  # only a token the mask let through is sampled: a broken invariant
                    raise RuntimeError(f"slot {slot}: the grammar refused token {t}, which its mask allowed")

    def _tensor(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _prefill(self, plan: StepPlan) -> dict[int, RowResult]:
        """Every chunk as one padded batch (padding has position -1: neither cached nor attended)."""
        chunks = plan.prefill
        width = max(len(c.token_ids) for c in chunks)
        ids = self._tensor([c.token_ids + [0] * (width - len(c.token_ids)) for c in chunks])
        pos = self._tensor([list(range(c.start, c.start + len(c.token_ids))) + [-1] * (width - len(c.token_ids))
                            for c in chunks])
        self.cache.ensure_capacity(max(c.start + len(c.token_ids) for c in chunks))
        hidden = self._trunk(ids, pos, self.cache.bind([c.slot for c in chunks]), [c.slot for c in chunks])
        done, last = [], []
        for j, c in enumerate(chunks):
            n = len(c.token_ids)
            if self.k:
                self._keep_chain(c.slot, hidden[j, :n], c.start, c.token_ids, c.prompt_len)
            if c.sample:
                done.append(c.slot)
                last.append(hidden[j, n - 1])
        if not done:
            return {}
        logits = self.model.compute_logits(torch.stack(last))
        batch = self._sampling(plan, done)
        tokens = batch.sample(self._constrained(plan, done, logits))
        lps = batch.logprobs(logits, tokens)
        out = {}
        for slot, t, lp in zip(done, tokens.tolist(), lps):
            out[slot] = RowResult([t], [lp], provenance=[0])
            self._accept(slot, [t])
            if self.k:
                state = self.mtp[slot]
                assert state is not None
                state.add_tokens(next(c.prompt_len for c in chunks if c.slot == slot), [t])
        return out

    def _keep_chain(self, slot: int, hidden: torch.Tensor, start: int, token_ids: list[int], prompt_len: int) -> None:
        """Trunk states and tokens of a prefill chunk that MTP drafting will read (only the last ring of them)."""
        lo = max(0, prompt_len - self.cache.ring_size)  # older states can never reach a window
        n = len(token_ids)
        if start + n <= lo:
            return
        first = max(lo, start)
        state = self.mtp[slot]
        if state is None:
            state = self.mtp[slot] = MTPState(prompt_len=prompt_len)
            start_chain(state, hidden[first - start :], first, self.k)
        else:
            state.chain[0].append(first, hidden[first - start :])
        state.add_tokens(first, token_ids[first - start :])

    def _step_trunk(self, n_tokens: int):
        """The compiled trunk for a decode/verify step of ``n_tokens`` tokens where it applies, else eager.

        A step compiles only while its MoE layers stay one graph (at most one expert assignment per expert on
        average, where the gathered-weights form reads no more than grouped matmuls would)."""
        cfg = self.model.config
        if self._compiled_trunk is not None and (
            not self._has_moe or n_tokens * cfg.num_experts_per_tok <= cfg.n_routed_experts
        ):
            return self._compiled_trunk
        return self.model.trunk

    def _forward_step(self, rows: list[DecodeRow], ids: torch.Tensor, pos: torch.Tensor, last: int) -> torch.Tensor:
        self.cache.ensure_capacity(last + 1)
        cache = self.cache.bind([r.slot for r in rows]).prepare(pos)
        if self.routing is not None:  # eager: a compiled step does not hand out its router decisions
            return self._trunk(ids, pos, cache, [r.slot for r in rows])
        return self._step_trunk(ids.numel())(ids, pos, cache)

    def _trunk(self, ids: torch.Tensor, pos: torch.Tensor, cache, slots: list[int]) -> torch.Tensor:
        """The eager trunk, its expert choices recorded for ``slots`` where the caller asked for them (R3)."""
        router_out: list | None = [] if self.routing is not None else None
        hidden = self.model.trunk(ids, pos, cache, router_out)
        if self.routing is not None:
            self.routing.record_forward(slots, pos, router_out)
        return hidden

    def _decode(self, plan: StepPlan, rows: list[DecodeRow]) -> dict[int, RowResult]:
        ids = self._tensor([[r.token] for r in rows])
        pos = self._tensor([[r.position] for r in rows])
        hidden = self._forward_step(rows, ids, pos, max(r.position for r in rows))
        logits = self.model.compute_logits(hidden[:, -1])
        slots = [r.slot for r in rows]
        batch = self._sampling(plan, slots)
        tokens = batch.sample(self._constrained(plan, slots, logits))
        lps = batch.logprobs(logits, tokens)
        out = {}
        states = hidden[:, :1].unbind(0) if self.k else ()  # each row's [1, D], in one call
        for j, (r, t, lp) in enumerate(zip(rows, tokens.tolist(), lps)):
            out[r.slot] = RowResult([t], [lp], provenance=[0])
            self._accept(r.slot, [t])
            if self.k:  # a plain step on a speculative engine (no row drafts): keep the chain going
                self._advance(r, states[j], [t])
        return out

    def _speculative(self, plan: StepPlan, rows: list[DecodeRow]) -> dict[int, RowResult]:
        k_max = max(r.drafts for r in rows)
        slots = [r.slot for r in rows]
        batch = self._sampling(plan, slots)
        states = [self.mtp[s] for s in slots]
        assert all(st is not None for st in states)
        floor = DRAFT_CONFIDENCE_FLOOR if self.config.speculative_policy == "adaptive" else None
        drafts, dprobs, kept, unsure, evidence = draft(self.model, self.cache, slots, states,
                                                       [r.position - 1 for r in rows], k_max, batch, floor,
                                                       plan.stop_unsure)
        kept = [min(n, r.drafts) for n, r in zip(kept, rows)]
        k = max(kept)
        if k == 0:  # no row kept a draft: a plain step (whose token continues the chains too)
            out = self._decode(plan, rows)
            for j, r in enumerate(rows):
                out[r.slot].catchup = evidence[j]
            return out
        drafts, dprobs = drafts[:, :k], dprobs[:, :k]
        ids = torch.cat([self._tensor([[r.token] for r in rows]), drafts], dim=1)  # [B, K+1]
        # a row with fewer drafts is padded: position -1 is neither cached nor attended
        pos = self._tensor([list(range(r.position, r.position + n + 1)) + [-1] * (k - n) for r, n in zip(rows, kept)])
        hidden = self._forward_step(rows, ids, pos, max(r.position + n for r, n in zip(rows, kept)))  # [B, K+1, D]
        logits = self.model.compute_logits(hidden)  # [B, K+1, V]
        b, v = len(rows), logits.shape[-1]
        # a constrained row's positions are scored masked, each by the grammar after the drafts before it
        scored = self._constrained(plan, slots, logits, [d[:n] for d, n in zip(drafts.tolist(), kept)])
        n_drafts = torch.tensor(kept, device=self.device) if min(kept) < k else None
        if batch.argmax_only:  # one-hot targets: the same verdict from the argmaxes
            accepted, out_ids = greedy_verify(drafts, scored.argmax(-1), n_drafts)
        else:
            verify = batch.repeat(k + 1, drafts)  # position i is scored as if drafts 1..i were already generated
            tprobs = verify.probs(scored.reshape(-1, v)).view(b, k + 1, v)
            accepted, out_ids = rejection_sample(drafts, dprobs, tprobs, batch.generators, n_drafts)
        out = {}
        for j, (r, a, toks) in enumerate(zip(rows, accepted.tolist(), out_ids.tolist())):
            toks = toks[: a + 1]
            lps = token_logprobs(logits[j, : a + 1], out_ids[j, : a + 1], [batch.top_logprobs[j]] * (a + 1))
            out[r.slot] = RowResult(toks, lps, drafted=kept[j], accepted=a,
                                    provenance=list(range(1, a + 1)) + [0], unsure=unsure[j][: kept[j]],
                                    catchup=evidence[j])
            self.cache.truncate(r.slot, r.position + 1 + a)
            self._accept(r.slot, toks)
            self._advance(r, hidden[j, : a + 1], toks)
        return out

    def _advance(self, row: DecodeRow, hidden: torch.Tensor, tokens: list[int]) -> None:
        """After a step fed ``row.token`` (and the accepted drafts) at ``row.position ..``: their trunk states
        extend the MTP chain and the produced tokens join the committed ones."""
        state = self.mtp[row.slot]
        assert state is not None
        state.chain[0].append(row.position, hidden)
        state.add_tokens(row.position + 1, tokens)
        # While the blocks sit idle (plain steps) the chain and the tokens would grow for as long as the request
        # runs, each row holding on to its step's hidden states; nothing further back than block 1 reaches is ever
        # read (speculative.reach). Trimmed once they are twice that long, so the copy that trims is rare.
        keep = self._reach + len(tokens) + 2
        if state.chain[0].count > 2 * keep:
            state.chain[0].drop_through(row.position - keep)
            state.forget_tokens_before(row.position - keep)

    # ------------------------------------------------------------------ accounting
    def sequence_bytes(self, length: int) -> int:
        return self.cache.sequence_bytes(length)


def _own_code(method: Callable) -> Callable:
    """A bound method whose function has a code object of its own (equal to the original): torch.compile keeps
    its graphs, and their guards, per code object."""
    f = method.__func__  # type: ignore[attr-defined]
    g = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    g.__kwdefaults__, g.__qualname__, g.__doc__ = f.__kwdefaults__, f.__qualname__, f.__doc__
    return types.MethodType(g, method.__self__)  # type: ignore[attr-defined]
