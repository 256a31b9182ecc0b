"""The engine: admission, chunked prefill, batched decode or MTP speculative decode, stop handling.

One :meth:`Engine.step` runs, in order: admission of waiting requests into free cache slots,
up to ``prefill_chunk`` prompt tokens of prefill, then one decode (or draft + verify) step for
every running request that has finished its prefill. Requests join and leave between steps.
Running requests occupy cache slots 0..n-1; when one leaves, the last moves into its slot, so
the decode batch reads the cache through views.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterable

import torch

from mimo.engine.kv_cache import HybridKVCache
from mimo.engine.outputs import CompletionOutput, RequestOutput, StreamDelta
from mimo.engine.params import SamplingParams
from mimo.engine.sampler import sample, target_probs, token_logprobs
from mimo.engine.sequence import Sequence
from mimo.engine.speculative import draft, start_chain
from mimo.model.causal_lm import CausalLM
from mimo.ops import kernels
from mimo.ops.sampling import rejection_sample
from mimo.tokenizer import IncrementalDetokenizer, Tokenizer
from mimo.utils.malloc import keep_freed_memory

logger = logging.getLogger(__name__)


class Engine:
    def __init__(
        self,
        model: CausalLM,
        tokenizer: Tokenizer | None = None,
        num_speculative_tokens: int = 0,
        max_num_seqs: int = 16,
        max_model_len: int | None = None,
        prefill_chunk: int = 512,
        compile: bool = False,
        eos_token_ids: Iterable[int] = (),
    ) -> None:
        """``eos_token_ids``: ids that end a sequence besides config.json's and the tokenizer's EOS (the
        model directory's generation_config.json lists them; :class:`mimo.engine.llm.LLM` reads it)."""
        cfg = model.config
        k = num_speculative_tokens
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"num_speculative_tokens must be an integer >= 0, got {k!r}")
        if k > cfg.num_mtp_layers:
            raise ValueError(
                f"num_speculative_tokens={k} needs {k} MTP block(s), but this checkpoint has {cfg.num_mtp_layers}"
                + (" (no model.mtp.* weights)" if cfg.num_mtp_layers == 0 else "")
            )
        self.model = model.eval()
        model.fuse_projections()
        weight = next(model.parameters())
        if weight.device.type == "cpu" and weight.dtype in kernels.DTYPES:
            # mimo's decode kernels, built (once per machine) or loaded now rather than in the first
            # step: the choice is fixed before a compiled step is traced, and a build's notice comes
            # before any output.
            kernels.load()
        # Decode and verify steps through torch.compile (inductor): the trunk becomes a few fused
        # kernels instead of ~1000 small eager ops. The first steps compile (tens of seconds on 2
        # cores, cached on disk afterwards); prefill and MTP drafting stay eager.
        # A step compiles only while its MoE layers stay one graph (at most one assignment per
        # expert on average, where the gathered-weights form reads no more than grouped matmuls would).
        # The C++ wrapper calls the ~150 kernels of a step without Python in between: 5-8% faster
        # batch-1 decode on the bench preset, for 15 s more compile time on first use.
        self._compiled_trunk = torch.compile(model.trunk, options={"cpp_wrapper": True}) if compile else None
        self._has_moe = any(cfg.is_moe(i) for i in range(cfg.num_hidden_layers))
        # Peaked softmaxes produce subnormal floats, which x86 handles in microcode (15x slower steps).
        torch.set_flush_denormal(True)
        keep_freed_memory()  # reuse activation memory instead of page-faulting it in every step
        self.tokenizer = tokenizer
        self.k = k
        self.max_num_seqs = max_num_seqs
        self.max_model_len = min(max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        self.prefill_chunk = prefill_chunk
        dtype = weight.dtype
        self.cache = HybridKVCache(cfg, max_num_seqs, self.max_model_len + k + 1, lookahead=k + 1, dtype=dtype,
                                   dynamic_capacity=compile)
        eos = set(cfg.eos_token_ids) | set(eos_token_ids)
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.eos_ids = eos
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.requests: dict[str, list[Sequence]] = {}  # until release(): the LLM front end reads final outputs
        self._ids = itertools.count()

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
            if params.seed is not None:
                seq.generator = torch.Generator().manual_seed(params.seed + i)
            if self.tokenizer is not None:
                seq.detok = IncrementalDetokenizer(self.tokenizer, skip_special_tokens=params.skip_special_tokens)
            if params.logprobs is not None:
                seq.logprobs = []
            seqs.append(seq)
        self.waiting.extend(seqs)
        self.requests[request_id] = seqs
        return request_id

    def output(self, request_id: str) -> RequestOutput:
        return self.to_output(self.requests[request_id])

    def prefill_progress(self, request_id: str) -> tuple[int, int]:
        """(prompt tokens in the cache, prompt tokens) of a request's first sample."""
        seq = self.requests[request_id][0]
        return min(seq.num_computed, len(seq.prompt_ids)), len(seq.prompt_ids)

    def release(self, request_id: str) -> None:
        """Forget a request (aborting it if it still runs)."""
        self.abort(request_id)
        self.requests.pop(request_id, None)

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
        vocab = self.model.config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt has token id {bad[0]} outside the vocabulary [0, {vocab})")
        return ids

    def abort(self, request_id: str) -> bool:
        """Cancel a request wherever it is; its cache slot is freed at once."""
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

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def cache_bytes_in_use(self) -> int:
        return sum(self.cache.sequence_bytes(s.num_computed) for s in self.running)

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self) -> list[StreamDelta]:
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting.popleft()
            seq.slot = len(self.running)
            self.cache.reset(seq.slot)
            self.running.append(seq)
        touched = self._prefill([s for s in self.running if not s.prefilled])
        fresh = {id(s) for s in touched}  # their first token came from prefill this step
        ready = [s for s in self.running if s.prefilled and s.output_ids and not s.finished and id(s) not in fresh]
        if ready:
            if self.k:
                self._speculative_step(ready)
            else:
                self._decode_step(ready)
            touched += ready
        for s in touched:
            s.peak_cache_bytes = max(s.peak_cache_bytes, self.cache.sequence_bytes(s.num_computed))
        deltas = [self._delta(s) for s in touched]
        for seq in touched:
            if seq.finished and seq.slot >= 0:
                self._free(seq)
        return [d for d in deltas if d is not None]

    def _prefill(self, pending: list[Sequence]) -> list[Sequence]:
        """Up to ``prefill_chunk`` prompt tokens this step, as one padded batch over the waiting prompts."""
        rows: list[tuple[Sequence, int, int]] = []  # (seq, start, n)
        budget = self.prefill_chunk
        for seq in pending:
            if budget <= 0:
                break
            start = seq.num_computed
            n = min(budget, len(seq.prompt_ids) - start)
            rows.append((seq, start, n))
            budget -= n
        if not rows:
            return []
        width = max(n for _, _, n in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        pos = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding, neither cached nor attended
        for j, (seq, start, n) in enumerate(rows):
            ids[j, :n] = torch.tensor(seq.prompt_ids[start : start + n])
            pos[j, :n] = torch.arange(start, start + n)
        self.cache.ensure_capacity(int(pos.max()) + 1)
        hidden = self.model.trunk(ids, pos, self.cache.bind([seq.slot for seq, _, _ in rows]))
        done, last = [], []
        for j, (seq, start, n) in enumerate(rows):
            seq.num_computed += n
            seq.stats.prefill_chunks += 1
            if self.k:
                lo = max(0, len(seq.prompt_ids) - self.cache.ring_size)  # older states can never reach a window
                if start + n > lo:
                    keep = hidden[j, max(0, lo - start) : n]
                    if not seq.chain:
                        start_chain(seq, keep, max(lo, start), self.k)
                    else:
                        seq.chain[0].append(max(lo, start), keep)
            if seq.prefilled:
                done.append(seq)
                last.append(hidden[j, n - 1])
        if done:
            self._sample_and_commit(done, self.model.compute_logits(torch.stack(last)))
        return [seq for seq, _, _ in rows]

    def _decode_step(self, seqs: list[Sequence]) -> None:
        ids = torch.tensor([[s.output_ids[-1]] for s in seqs])
        pos = torch.tensor([[s.num_computed] for s in seqs])
        self.cache.ensure_capacity(int(pos.max()) + 1)
        hidden = self._step_trunk(ids.numel())(ids, pos, self.cache.bind([s.slot for s in seqs]).prepare(pos))
        for s in seqs:
            s.num_computed += 1
            s.stats.decode_steps += 1
        logits = self.model.compute_logits(hidden[:, -1])
        n_before = [len(s.output_ids) for s in seqs]
        self._sample_and_commit(seqs, logits)
        for s, n in zip(seqs, n_before):
            s.stats.decode_tokens += len(s.output_ids) - n

    def _step_trunk(self, n_tokens: int):
        """The compiled trunk for a decode/verify step of ``n_tokens`` tokens where it applies, else eager."""
        cfg = self.model.config
        if self._compiled_trunk is not None and (
            not self._has_moe or n_tokens * cfg.num_experts_per_tok <= cfg.n_routed_experts
        ):
            return self._compiled_trunk
        return self.model.trunk

    def _sample_and_commit(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        if all(s.params.temperature == 0 and not s.params.has_penalties for s in seqs):
            tokens = logits.argmax(-1)  # what sampling the greedy one-hot gives, without building it
        else:
            probs = target_probs(logits, [s.params for s in seqs], [s.prompt_ids for s in seqs],
                                 [s.output_ids for s in seqs])
            tokens = sample(probs, [s.generator for s in seqs])
        lps = token_logprobs(logits, tokens, [s.params.logprobs for s in seqs])
        for s, t, lp in zip(seqs, tokens.tolist(), lps):
            self._commit(s, [t], [lp])

    def _speculative_step(self, seqs: list[Sequence]) -> None:
        k = self.k
        drafts, dprobs = draft(self.model, self.cache, seqs, k)
        q = torch.tensor([s.num_computed - 1 for s in seqs])
        ids = torch.cat([torch.tensor([[s.output_ids[-1]] for s in seqs]), drafts], dim=1)  # [B, K+1]
        pos = q[:, None] + 1 + torch.arange(k + 1)[None]
        self.cache.ensure_capacity(int(pos.max()) + 1)
        hidden = self._step_trunk(ids.numel())(ids, pos, self.cache.bind([s.slot for s in seqs]).prepare(pos))  # [B, K+1, D]
        logits = self.model.compute_logits(hidden)  # [B, K+1, V]
        b, v = len(seqs), logits.shape[-1]
        flat_params = [s.params for s in seqs for _ in range(k + 1)]
        if any(p.has_penalties for p in flat_params):
            # position i is scored as if drafts 1..i were already generated
            histories = [s.output_ids + drafts[j, :i].tolist() for j, s in enumerate(seqs) for i in range(k + 1)]
            prompts = [s.prompt_ids for s in seqs for _ in range(k + 1)]
        else:
            histories = prompts = [[] for _ in flat_params]  # unused without penalties
        tprobs = target_probs(logits.reshape(-1, v), flat_params, prompts, histories).view(b, k + 1, v)
        accepted, out = rejection_sample(drafts, dprobs, tprobs, [s.generator for s in seqs])
        for j, s in enumerate(seqs):
            a = int(accepted[j])
            toks = out[j, : a + 1]
            lps = token_logprobs(logits[j, : a + 1], toks, [s.params.logprobs] * (a + 1))
            s.stats.decode_steps += 1
            s.stats.drafted += k
            n_before = len(s.output_ids)
            self._commit(s, toks.tolist(), lps, list(range(1, a + 1)) + [0])  # drafts 1..a, then the trunk's token
            # Accepted drafts that made it into the output: a stop (or max_tokens) may cut the step's tail off.
            s.stats.accepted += min(a, len(s.output_ids) - n_before)
            s.stats.decode_tokens += len(s.output_ids) - n_before
            s.num_computed = int(q[j]) + 2 + a
            if not s.finished:
                self.cache.truncate(s.slot, s.num_computed)
                s.chain[0].append(int(q[j]) + 1, hidden[j, : a + 1])

    # ------------------------------------------------------------------ stopping
    def _commit(self, s: Sequence, tokens: list[int], lps: list, provenance: list[int] | None = None) -> None:
        p = s.params
        for t, lp, src in zip(tokens, lps, provenance or [0] * len(tokens)):
            s.output_ids.append(t)
            s.provenance.append(src)
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
        provenance = s.provenance[s.sent_tokens :]
        s.sent_chars, s.sent_tokens = upto, len(s.output_ids)
        if not text and not toks and not s.finished:
            return None
        return StreamDelta(s.request_id, text, toks, s.index, s.finish_reason, s.stop_reason, lps, s.error, provenance)

    def _free(self, seq: Sequence) -> None:
        slot = seq.slot
        self.running.remove(seq)
        seq.slot = -1
        last = len(self.running)  # slots are 0..last now, with a hole at `slot` unless it was the last
        if slot < last:
            mover = next(s for s in self.running if s.slot == last)
            self.cache.move(last, slot, mover.num_computed)
            mover.slot = slot
        self.cache.reset(last)
        self.running.sort(key=lambda s: s.slot)

    # ------------------------------------------------------------------ outputs
    @staticmethod
    def to_output(seqs: list[Sequence]) -> RequestOutput:
        """Group a request's n sequences into one vLLM-style RequestOutput."""
        first = seqs[0]
        outs = [CompletionOutput(s.index, s.text, list(s.output_ids), s.finish_reason, s.stop_reason,
                                 s.logprobs, s.error) for s in sorted(seqs, key=lambda s: s.index)]
        stats = type(first.stats)()
        for s in seqs:
            for f in ("decode_steps", "prefill_chunks", "drafted", "accepted", "decode_tokens"):
                setattr(stats, f, getattr(stats, f) + getattr(s.stats, f))
        return RequestOutput(first.request_id, first.prompt, first.prompt_ids, outs,
                             all(s.finished for s in seqs), stats, max(s.peak_cache_bytes for s in seqs))
