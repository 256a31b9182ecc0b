"""The host side of the engine: requests, cache slots, what each step does, and when sequences stop.

One :class:`Scheduler` per engine, touching no tensor. :meth:`Scheduler.schedule` admits waiting sequences
into free cache slots and plans a step (:class:`mimo.engine.plan.StepPlan`): up to ``prefill_chunk`` prompt
tokens over the sequences still prefilling, then one decode (or draft + verify) row for every sequence that
has a token to continue from. :meth:`Scheduler.update` commits what the runner produced: stop tokens, stop
strings, length limits, detokenised text, statistics, and the deltas callers stream.

Slots: running sequences occupy slots 0..n-1. When one leaves, the sequence in the last slot moves into its
place (a move the next plan carries), so a decode batch reads the cache through views.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable

from mimo.engine.outputs import CompletionOutput, RequestOutput, SpecStats, StreamDelta
from mimo.engine.params import SamplingParams
from mimo.engine.plan import DecodeRow, PrefillChunk, RowResult, SlotStart, StepPlan
from mimo.engine.policy import SpeculationPolicy
from mimo.engine.sequence import Sequence
from mimo.tokenizer import IncrementalDetokenizer, Tokenizer


class Scheduler:
    def __init__(
        self,
        *,
        max_num_seqs: int,
        max_model_len: int,
        prefill_chunk: int,
        num_speculative_tokens: int,
        vocab_size: int,
        eos_ids: Iterable[int],
        tokenizer: Tokenizer | None = None,
        sequence_bytes: Callable[[int], int] = lambda n: 0,
        policy: SpeculationPolicy | None = None,
    ) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.prefill_chunk = prefill_chunk
        self.k = num_speculative_tokens
        self.vocab_size = vocab_size
        self.eos_ids = set(eos_ids)
        self.tokenizer = tokenizer
        self.sequence_bytes = sequence_bytes  # KV-cache bytes of a sequence of n positions
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.requests: dict[str, list[Sequence]] = {}  # until release(): the LLM front end reads final outputs
        self._ids = itertools.count()
        self._moves: list[tuple[int, int, int]] = []  # compaction done since the last plan
        self.policy = policy or SpeculationPolicy(num_speculative_tokens, "fixed")  # drafts per decode step

    # ------------------------------------------------------------------ requests
    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        """Queue a request (``params.n`` samples of it). Bad input raises ``ValueError``; nothing is queued."""
        params = params or SamplingParams()
        params.validate()
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        text = prompt if isinstance(prompt, str) else None
        ids = self._encode(prompt)
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer (this engine has none); use stop_token_ids")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens; max_model_len is {self.max_model_len} "
                             "(prompt plus at least one generated token must fit)")
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        seqs = []
        for i in range(params.n):
            seq = Sequence(request_id, text, ids, params, index=i)
            if self.tokenizer is not None:
                seq.detok = IncrementalDetokenizer(self.tokenizer, skip_special_tokens=params.skip_special_tokens)
            if params.logprobs is not None:
                seq.logprobs = []
            seqs.append(seq)
        self.waiting.extend(seqs)
        self.requests[request_id] = seqs
        return request_id

    def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer; pass token ids instead")
            if not prompt:
                raise ValueError("prompt is empty")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
            if any(not isinstance(t, int) or isinstance(t, bool) for t in ids):
                raise ValueError("a token-id prompt must be a list of integers")
        if not ids:
            raise ValueError("prompt is empty")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt has token id {bad[0]} outside the vocabulary [0, {self.vocab_size})")
        return ids

    def abort(self, request_id: str) -> bool:
        """Cancel a request wherever it is; its cache slot is free for the next step."""
        found = False
        for seq in list(self.waiting):
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                seq.finish_reason = "abort"
                found = True
        for seq in list(self.running):
            if seq.request_id == request_id:
                seq.finish_reason = "abort"
                self._free(seq)
                found = True
        return found

    def release(self, request_id: str) -> None:
        """Forget a request (aborting it if it still runs)."""
        self.abort(request_id)
        self.requests.pop(request_id, None)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------------ planning
    def schedule(self) -> StepPlan:
        plan = StepPlan(moves=self._moves)
        self._moves = []
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting.popleft()
            seq.slot = len(self.running)
            self.running.append(seq)
            plan.starts.append(SlotStart(seq.slot, seq.seed))
        budget = self.prefill_chunk
        for seq in self.running:
            if seq.prefilled or budget <= 0:
                continue
            start = seq.num_computed
            n = min(budget, len(seq.prompt_ids) - start)
            last = start + n == len(seq.prompt_ids)
            plan.prefill.append(PrefillChunk(seq.slot, start, seq.prompt_ids[start : start + n], len(seq.prompt_ids),
                                             last))
            budget -= n
            if last:
                self._sampling(plan, seq)
        decoding = [s for s in self.running if s.prefilled and s.output_ids and not s.finished]
        k = 0
        if decoding and self.policy.max_k:
            # closed: no request waits, so these rows (and any still prefilling, which join them) are all the batch
            # will hold until it ends
            closed = not self.waiting
            k = self.policy.choose([s.key for s in decoding], [s.num_computed for s in decoding],
                                   [self._remaining(s) for s in decoding] if closed else None)
        if k:
            plan.stop_unsure = self.policy.stop_unsure()
        for seq in decoding:
            plan.decode.append(DecodeRow(seq.slot, seq.output_ids[-1], seq.num_computed, k))
            self._sampling(plan, seq)
        return plan

    def _remaining(self, s: Sequence) -> int:
        """The most tokens a sequence may still produce (a stop may end it sooner)."""
        left = self.max_model_len - len(s.prompt_ids) - len(s.output_ids)
        if s.params.max_tokens is not None:
            left = min(left, s.params.max_tokens - len(s.output_ids))
        return max(1, left)

    @staticmethod
    def _sampling(plan: StepPlan, seq: Sequence) -> None:
        plan.params[seq.slot] = seq.params
        if seq.params.has_penalties:
            plan.histories[seq.slot] = (seq.prompt_ids, seq.output_ids)

    # ------------------------------------------------------------------ committing
    def update(self, plan: StepPlan, results: dict[int, RowResult]) -> list[StreamDelta]:
        """Commit the runner's tokens; return the step's deltas (finished sequences leave their slots)."""
        by_slot = {s.slot: s for s in self.running}
        touched: list[Sequence] = []
        for chunk in plan.prefill:
            seq = by_slot[chunk.slot]
            seq.num_computed += len(chunk.token_ids)
            seq.stats.prefill_chunks += 1
            touched.append(seq)
            if chunk.sample:  # the prompt's last chunk: its first token
                self._commit(seq, results[chunk.slot])
        for row in plan.decode:
            seq, r = by_slot[row.slot], results[row.slot]
            seq.stats.decode_steps += 1
            seq.stats.drafted += r.drafted
            seq.stats.drafts_per_step[r.drafted] = seq.stats.drafts_per_step.get(r.drafted, 0) + 1
            if row.drafts:
                self.policy.observe_row(seq.key, r.drafted, r.accepted, r.unsure, cut=r.drafted < row.drafts)
                if r.catchup[0]:
                    self.policy.observe_unmade(seq.key, *r.catchup)
                self.policy.stats.rows_cut_short += r.drafted < row.drafts
            seq.num_computed += 1 + r.accepted  # the fed token and the accepted drafts are now cached
            n_before = len(seq.output_ids)
            self._commit(seq, r)
            committed = len(seq.output_ids) - n_before
            # Accepted drafts that made it into the output: a stop (or max_tokens) may cut the step's tail off.
            seq.stats.accepted += min(r.accepted, committed)
            seq.stats.decode_tokens += committed
            touched.append(seq)
        if plan.decode:
            self.policy.observe_tokens(sum(len(results[r.slot].tokens) for r in plan.decode) / len(plan.decode))
        for s in touched:
            s.peak_cache_bytes = max(s.peak_cache_bytes, self.sequence_bytes(s.num_computed))
        deltas = [self._delta(s) for s in dict.fromkeys(touched)]
        for seq in touched:
            if seq.finished and seq.slot >= 0:
                self._free(seq)
        return [d for d in deltas if d is not None]

    def _commit(self, s: Sequence, r: RowResult) -> None:
        p = s.params
        provenance = r.provenance or [0] * len(r.tokens)
        for t, lp, depth in zip(r.tokens, r.logprobs, provenance):
            s.output_ids.append(t)
            s.provenance.append(depth)
            if s.logprobs is not None and lp is not None:
                s.logprobs.append(lp)
            if s.detok is not None:
                s.text += s.detok.add(t)
            if not p.ignore_eos and t in self.eos_ids:
                s.finish_reason = "stop"
            elif t in p.stop_token_ids:
                s.finish_reason, s.stop_reason = "stop", t
            elif p.stop and self._check_stop_strings(s):
                pass
            elif p.max_tokens is not None and len(s.output_ids) >= p.max_tokens:
                s.finish_reason = "length"
            elif len(s.prompt_ids) + len(s.output_ids) >= self.max_model_len:
                s.finish_reason = "length"
            if s.finished:
                break

    def _check_stop_strings(self, s: Sequence) -> bool:
        longest = max(len(x) for x in s.params.stop)
        window_start = max(0, s.sent_chars - longest)
        hits = [(s.text.find(x, window_start), x) for x in s.params.stop]
        hits = [(i, x) for i, x in hits if i >= 0]
        if not hits:
            return False
        i, x = min(hits)
        s.text = s.text[: i + len(x)] if s.params.include_stop_str_in_output else s.text[:i]
        s.finish_reason, s.stop_reason = "stop", x
        return True

    def _delta(self, s: Sequence) -> StreamDelta | None:
        if s.finished and s.detok is not None and s.finish_reason != "stop":
            s.text += s.detok.flush()
        hold = 0
        if not s.finished and s.params.stop:
            hold = max(len(x) for x in s.params.stop) - 1  # a stop string may be forming at the end
        upto = max(s.sent_chars, len(s.text) - hold)
        text = s.text[s.sent_chars : upto]
        toks = s.output_ids[s.sent_tokens :]
        lps = s.logprobs[s.sent_tokens :] if s.logprobs is not None else None
        prov = s.provenance[s.sent_tokens :]
        s.sent_chars, s.sent_tokens = upto, len(s.output_ids)
        if not text and not toks and not s.finished:
            return None
        return StreamDelta(s.request_id, text, toks, s.index, s.finish_reason, s.stop_reason, lps, s.error, prov)

    def _free(self, seq: Sequence) -> None:
        self.policy.forget(seq.key)
        slot = seq.slot
        self.running.remove(seq)
        seq.slot = -1
        last = len(self.running)  # slots are 0..last now, with a hole at `slot` unless it was the last
        if slot < last:
            mover = next(s for s in self.running if s.slot == last)
            self._moves.append((last, slot, mover.num_computed))
            mover.slot = slot
        self.running.sort(key=lambda s: s.slot)

    # ------------------------------------------------------------------ outputs
    def output(self, request_id: str) -> RequestOutput:
        return to_output(self.requests[request_id])

    def prefill_progress(self, request_id: str) -> tuple[int, int]:
        """(prompt tokens in the cache, prompt tokens) of a request's first sample."""
        seq = self.requests[request_id][0]
        return min(seq.num_computed, len(seq.prompt_ids)), len(seq.prompt_ids)

    def cache_bytes_in_use(self) -> int:
        return sum(self.sequence_bytes(s.num_computed) for s in self.running)


def to_output(seqs: list[Sequence]) -> RequestOutput:
    """Group a request's n sequences into one vLLM-style RequestOutput."""
    first = seqs[0]
    outs = [CompletionOutput(s.index, s.text, list(s.output_ids), s.finish_reason, s.stop_reason, s.logprobs, s.error)
            for s in sorted(seqs, key=lambda s: s.index)]
    stats = SpecStats()
    for s in seqs:
        for f in ("decode_steps", "prefill_chunks", "drafted", "accepted", "decode_tokens"):
            setattr(stats, f, getattr(stats, f) + getattr(s.stats, f))
        for k, n in s.stats.drafts_per_step.items():
            stats.drafts_per_step[k] = stats.drafts_per_step.get(k, 0) + n
    return RequestOutput(first.request_id, first.prompt, first.prompt_ids, outs, all(s.finished for s in seqs), stats,
                         max(s.peak_cache_bytes for s in seqs))

