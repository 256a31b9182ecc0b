"""MTP drafting, on the runner's side: block k drafts depth k (paper §2.3, §5).

Alignment (see :func:`mimo.model.mtp_shift`): block k at position i reads token t[i+k] and the chain state
h^(k-1)[i]; its output predicts t[i+k+1]. With q the last position the trunk has processed and t[q+1] the
last committed token, block 1 at q drafts t[q+2], block 2 at q (fed that draft) drafts t[q+3], and so on.

Every MTP block keeps its own sliding-window KV cache, filled only from *committed* inputs. Each step,
block k first catches up over the positions whose inputs became committed since the last step
(``frontier[k-1] + 1 .. q-k+1``, but never further back than :func:`reach`: a block that sat idle skips
what no query can read any more), then runs the k-1 positions that depend on this step's drafts
(``q-k+2 .. q``). Those draft-dependent cache entries are invalidated as soon as the drafts are made, so a
rejected draft never leaves a trace.

The state this needs per cache slot (:class:`MTPState`: committed chain states, frontiers, and the recent
committed tokens) lives with the runner, beside the KV cache, and moves with its slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mimo.engine.kv_cache import HybridKVCache
from mimo.engine.sampling import SamplingBatch, sample
from mimo.model.causal_lm import CausalLM
from mimo.model.mtp import mtp_token_index


@dataclass
class ChainRows:
    """Committed MTP chain states h^k for consecutive positions ``start .. start + len - 1``.

    Appended pieces are kept as a list and joined when read: a plain step appends one row per sequence, and
    joining at every append would copy the whole chain each step (for as long as the blocks sit idle)."""

    start: int = 0
    parts: list[torch.Tensor] = field(default_factory=list)  # [n_i, D] each, consecutive
    count: int = 0

    @property
    def rows(self) -> torch.Tensor | None:
        if len(self.parts) > 1:
            self.parts = [torch.cat(self.parts, dim=0)]
        return self.parts[0] if self.parts else None

    def end(self) -> int:
        return self.start + self.count

    def append(self, start: int, rows: torch.Tensor) -> None:
        """Rows for positions ``start ..``: they continue the ones kept, or start after a gap (the kept ones
        are then older than anything a block can still read: see :func:`reach`)."""
        if self.count == 0 or start > self.end():
            self.start, self.parts, self.count = start, [rows], rows.shape[0]
            return
        if start != self.end():
            raise AssertionError(f"chain rows must be contiguous: have up to {self.end()}, got {start}")
        self.parts.append(rows)
        self.count += rows.shape[0]

    def get(self, positions: range) -> torch.Tensor:
        assert self.count and positions.start >= self.start and positions.stop <= self.end(), (
            positions, self.start, self.end())
        rows = self.rows
        assert rows is not None
        return rows[positions.start - self.start : positions.stop - self.start]

    def drop_through(self, position: int) -> None:
        """Forget rows at positions <= ``position``."""
        cut = max(0, min(position + 1 - self.start, self.count))
        if not cut:
            return
        rows = self.rows
        assert rows is not None
        self.parts = [rows[cut:]]
        self.start += cut
        self.count -= cut


@dataclass
class MTPState:
    """One slot's drafting state: chain[k] holds committed h^k (k = 0 is the trunk's normed output);
    frontier[k] is the last position block k+1 has processed with committed inputs only (its cache is valid
    through it); ``tokens`` are the committed tokens from position ``tokens_start`` on."""

    chain: list[ChainRows] = field(default_factory=list)
    frontier: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    tokens_start: int = 0
    prompt_len: int = 0  # committed tokens from here on were generated (block 1's catch-up scores itself there)

    def add_tokens(self, start: int, ids: list[int]) -> None:
        """Committed tokens at positions ``start ..``; they must continue the ones kept."""
        if not self.tokens:
            self.tokens_start = start
        elif start != self.tokens_start + len(self.tokens):
            raise AssertionError(f"committed tokens must be contiguous: have up to "
                                 f"{self.tokens_start + len(self.tokens)}, got {start}")
        self.tokens.extend(ids)

    def token(self, index: int) -> int:
        return self.tokens[index - self.tokens_start]

    def forget_tokens_before(self, index: int) -> None:
        cut = max(0, min(index - self.tokens_start, len(self.tokens)))
        del self.tokens[:cut]
        self.tokens_start += cut


def reach(k: int, blocks: int, window: int) -> int:
    """How far behind the newest position ``q`` block k (1-based, of ``blocks``) ever needs to have run: its own
    sliding window, plus the windows of every deeper block that reads its outputs. Positions further back are
    skipped when a block catches up after sitting idle (the adaptive policy may leave deeper blocks idle for a
    long time), which bounds both the catch-up work and the chain states and tokens kept, and changes no
    draft: every key a query can still attend to is computed."""
    return (blocks - k + 1) * window


def start_chain(state: MTPState, hidden: torch.Tensor, first_pos: int, k_max: int) -> None:
    """After prefill: trunk states for positions first_pos.. start the chain; no block has run yet."""
    state.chain = [ChainRows() for _ in range(k_max)]
    state.chain[0].append(first_pos, hidden)
    state.frontier = [first_pos - 1] * k_max


@torch.no_grad()
def draft(model: CausalLM, cache: HybridKVCache, slots: list[int], states: list[MTPState], last_pos: list[int],
          k_max: int, sampling: SamplingBatch, floor: float | None = None,
          stop_unsure: tuple[bool | None, ...] = ()
          ) -> tuple[torch.Tensor, torch.Tensor, list[int], list[list[bool]], list[tuple[int, int]]]:
    """Draft up to ``k_max`` tokens per row -> (draft ids [B, K], draft probs [B, K, V] (V = 0 for a greedy batch,
    whose verify needs none), drafts kept per row,
    per row whether each kept draft was unsure, per row (drafts scored, right) of block 1's catch-up).

    Catch-up evidence: where block 1 catches up after sitting idle (over more positions than a drafting step
    commits), its output at each position whose target token is committed and was generated is a draft that
    was never made; for a greedy row the verify would have accepted it exactly when it equals the committed
    token (the target's argmax), so block 1's argmax there is scored against it (at the last
    :data:`EVIDENCE_POSITIONS` such positions). The policy learns a row's
    depth-1 acceptance from these while it decodes plain, not only from the drafts it pays for. (A sampled
    row's acceptance depends on the target's probabilities there, which are gone: it is not scored.)

    Row j is cache slot ``slots[j]`` whose trunk has processed positions up to ``last_pos[j]`` (q); each
    state's chain and frontiers advance over what became committed. A draft is *unsure* when its token has less
    than ``floor`` probability under its block (its sampling distribution; for a greedy row, whose distribution
    is one-hot, the block's softmax), measured at depth ``d`` unless ``stop_unsure[d-1]`` is None (or missing).
    Where it is True and every row still drafting is unsure, they all stop there (a verify is as wide as its
    longest row, so cutting some rows saves nothing), keeping no draft from that depth on, and deeper blocks
    catch up at a later step."""
    b = len(slots)
    device = cache.device
    window = cache.window
    drafts = torch.zeros(b, k_max, dtype=torch.long, device=device)
    # such a batch's drafts are argmaxes and its verify compares argmaxes (greedy_verify): no distributions
    argmax_only = sampling.argmax_only
    probs = torch.zeros(b, k_max, 0 if argmax_only else model.config.vocab_size, device=device)
    drafted: list[list[int]] = [[] for _ in range(b)]  # host copies of the drafts, for the next depth's inputs
    q = last_pos
    pending: list[tuple[int, torch.Tensor] | None] = [None] * b  # block k-1's draft-dependent rows (start, rows)
    kept = [0] * b  # drafts each row keeps
    unsure: list[list[bool]] = [[] for _ in range(b)]
    alive = [True] * b
    evidence = [(0, 0)] * b
    greedy = [prm.temperature == 0 for prm in sampling.params]  # their p is one-hot
    for k in range(1, k_max + 1):
        if not any(alive):
            break
        ids, chains, poss, spans = [], [], [], []
        for j, st in enumerate(states):
            lo, hi = max(st.frontier[k - 1] + 1, q[j] - reach(k, len(st.chain), window)), q[j]
            commit_end = q[j] - k + 1
            # Block k at position i reads t[i+k]: committed up to q+1, this step's drafts after that.
            ids.append([st.token(t) if t <= q[j] + 1 else drafted[j][t - q[j] - 2]
                        for t in (mtp_token_index(i, k) for i in range(lo, hi + 1))])
            known_end = min(hi, st.chain[k - 1].end() - 1)
            parts = [st.chain[k - 1].get(range(lo, known_end + 1))] if known_end >= lo else []
            if known_end < hi:
                start, rows = pending[j]  # type: ignore[misc]
                parts.append(rows[known_end + 1 - start : hi + 1 - start])
            chains.append(torch.cat(parts, dim=0))
            poss.append(list(range(lo, hi + 1)))
            spans.append((lo, hi, commit_end))
        width = max(len(t) for t in ids)
        ids_t = torch.tensor([t + [0] * (width - len(t)) for t in ids], dtype=torch.long, device=device)
        pos_t = torch.tensor([p + [-1] * (width - len(p)) for p in poss], dtype=torch.long, device=device)
        chain_t = torch.zeros(b, width, chains[0].shape[-1], dtype=chains[0].dtype, device=device)
        for j in range(b):
            chain_t[j, : len(ids[j])] = chains[j]
        out = model.mtp_block(k, ids_t, chain_t, pos_t, cache.bind(slots))  # [B, W, D]
        if k == 1:
            evidence = _catchup_evidence(model, out, states, spans, q, greedy, k_max)
        last = []
        for j, st in enumerate(states):
            lo, hi, commit_end = spans[j]
            n_commit = max(0, commit_end - lo + 1)
            if n_commit:
                if k < len(st.chain):  # a deeper block reads these, in this step or a later one
                    st.chain[k].append(lo, out[j, :n_commit])
                    st.chain[k].drop_through(q[j] - reach(k + 1, len(st.chain), window) - 1)
                st.frontier[k - 1] = commit_end
                st.chain[k - 1].drop_through(commit_end)
            pending[j] = (lo + n_commit, out[j, n_commit : hi - lo + 1])
            last.append(out[j, hi - lo])
            cache.truncate_one(("mtp", k - 1), slots[j], st.frontier[k - 1] + 1)
        logits = model.compute_logits(torch.stack(last))
        if argmax_only:
            d = logits.argmax(-1)  # what sampling the one-hot of filtered() would give
        else:
            p = sampling.filtered(logits)  # [B, V]
            d = sample(p, sampling.generators)
            probs[:, k - 1] = p
        drafts[:, k - 1] = d
        low = [False] * b
        rule = stop_unsure[k - 1] if k <= len(stop_unsure) else None
        if floor is not None and rule is not None:
            # a greedy row's distribution is one-hot: its confidence is the block's softmax
            raw = torch.softmax(logits.float(), -1).gather(1, d[:, None]).squeeze(1) if any(greedy) else None
            if all(greedy):
                conf = raw
            else:
                conf = p.gather(1, d[:, None]).squeeze(1)
                if raw is not None:
                    conf = torch.where(torch.tensor(greedy, device=conf.device), raw, conf)
            low = (conf < floor).tolist()
        # A verify is as wide as its longest row, so cutting one row while others go on saves nothing and
        # loses that row's chance: rows stop only when every row still drafting is unsure.
        stop = bool(rule) and all(low[j] for j in range(b) if alive[j])
        for j, t in enumerate(d.tolist()):
            drafted[j].append(t)
            alive[j] = alive[j] and not (stop and low[j])
            if alive[j]:
                kept[j] += 1
                unsure[j].append(low[j])
    for st, qj in zip(states, q):  # tokens below every block's next input can no longer be read
        nxt = [max(st.frontier[i] + 1, qj - reach(i + 1, len(st.chain), window)) for i in range(len(st.chain))]
        st.forget_tokens_before(min(nxt) + 1)
    return drafts, probs, kept, unsure, evidence


EVIDENCE_POSITIONS = 16
"""The most positions of one row's catch-up that block 1's unmade drafts are scored at (see :func:`draft`)."""


def _catchup_evidence(model: CausalLM, out: torch.Tensor, states: list[MTPState], spans: list[tuple[int, int, int]],
                      q: list[int], greedy: list[bool], k_max: int) -> list[tuple[int, int]]:
    """Per row, (positions scored, block 1's argmax right) over its catch-up (see :func:`draft`): positions
    i in lo..q-1 (block 1 at i predicts t[i+2], committed up to t[q+1]) whose target was generated, for greedy rows
    whose span is longer than a drafting step's (a steady step's few positions follow accepted drafts: an easier
    stretch of text, and already counted by the verify)."""
    res = [(0, 0)] * len(states)
    for j, (st, (lo, _, _)) in enumerate(zip(states, spans)):
        last = q[j] - 1
        # t[i+2] generated (i + 2 >= prompt_len), and the last EVIDENCE_POSITIONS only: on a large model on a CPU
        # the head's compute over 16 positions (152k x 4096 each) is already most of a batch-1 decode step
        first = max(lo, st.prompt_len - 2, last - EVIDENCE_POSITIONS + 1)
        if not greedy[j] or q[j] - lo <= k_max + 1 or last < first:
            continue
        guess = model.compute_logits(out[j, first - lo : last - lo + 1]).argmax(-1).tolist()
        right = sum(g == st.token(i + 2) for g, i in zip(guess, range(first, last + 1)))
        res[j] = (len(guess), right)
    return res
