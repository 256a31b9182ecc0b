"""How many MTP drafts a step makes: the speculation policy (host side: no torch, no model).

A verify of k drafts pays only when the tokens it accepts outweigh what it costs, and both change: the cost
with the batch size (more tokens touch more experts) and the machine, the acceptance with the text. The
adaptive policy picks, before every decode step, the k in 0..K that maximises the batch's expected tokens per
second:

    rate(k) = sum over rows r of (1 + E_r[accepted | k]) / cost(B, k)
    E_r[accepted | k] = sum_{i=1..k} prod_{j<=i} a_r,j

where ``a_r,j`` is row r's chance that draft j is accepted once drafts 1..j-1 were (its own recent history,
shrunk towards the engine-wide figure for depth j), and ``cost(B, k)`` is the step's measured time (a running
average per batch size and k, from the engine's own clock), started from the weights-read arithmetic of
``mimo info`` until measured. The runner also stops drafting a row early at a depth whose own draft is
unsure (below :data:`DRAFT_CONFIDENCE_FLOOR` under its block), EAGLE-2's idea with MTP's distinct blocks, but
only at depths where unsure drafts have been seen to fail: how a block's confidence relates to acceptance
differs from model to model (a small model's softmax is flat even where its argmax is right), so the policy
learns it per depth from the unsure drafts verified before it cut any.

Whatever the policy decides, output is what the verification makes it: greedy equals plain greedy and
sampling stays exact (rejection sampling); the policy changes speed only. ``fixed`` always drafts K.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from dataclasses import dataclass, field

POLICIES = ("adaptive", "fixed")

DRAFT_CONFIDENCE_FLOOR = 0.1
"""The runner stops drafting a row (adaptive policy) at the first depth whose drafted token has less than this
probability under its own MTP block: the target would rarely agree, and the deeper drafts depend on it."""

UNSURE_STOP_BELOW = 0.3
"""Unsure drafts are cut at a depth once their acceptance there (Laplace estimate) is below this."""

_UNSURE_EVIDENCE = 64  # unsure drafts verified at a depth after which, if they pass, they are no longer looked at
_BONUS = 0.5  # the optimistic acceptance's bonus at a depth never tested (it falls as 1/sqrt(1 + drafts tested))
_SWITCH_GAIN = 1.03  # the objective's k changes only for at least this gain in expected tokens/s
_PSEUDO = 4.0  # how many observations the engine-wide acceptance counts as, for a row's own estimate
_DECAY = 0.9  # each new step of a row weighs its older ones by this (acceptance drifts with the text)
_HOPELESS = 0.9  # an exploration upwards whose optimistic rate is below this fraction of the best's waits longest
_HOPELESS_EVIDENCE = 32  # drafts verified at that depth before it can be judged so (a few unlucky ones are not)
_TIME_SAMPLES = 15  # step times kept per (batch, drafts): their mean, less outliers, is the cost


def _age(tries: list[float], accepts: list[float]) -> None:
    """Weigh a row's record by :data:`_DECAY`, once per step it takes part in."""
    for j in range(len(tries)):
        tries[j] *= _DECAY
        accepts[j] *= _DECAY


@dataclass
class PolicyStats:
    """Aggregate figures of the policy's choices (engine-wide since it started)."""

    steps_by_k: dict[int, int] = field(default_factory=dict)  # decode steps per chosen k
    predicted_tokens: float = 0.0  # sum over steps of the tokens the policy expected the chosen k to give
    realised_tokens: float = 0.0  # tokens those steps gave (per row)
    explored: int = 0  # steps whose k was chosen to measure rather than by the objective
    rows_cut_short: int = 0  # rows of drafting steps that kept fewer drafts than the step's k (unsure drafts)

    def as_dict(self) -> dict:
        steps = sum(self.steps_by_k.values())
        return {"steps_by_k": dict(sorted(self.steps_by_k.items())), "explored_steps": self.explored,
                "rows_cut_short": self.rows_cut_short,
                "predicted_tokens_per_step": self.predicted_tokens / steps if steps else 0.0,
                "realised_tokens_per_step": self.realised_tokens / steps if steps else 0.0}


class SpeculationPolicy:
    def __init__(self, max_k: int, policy: str = "adaptive",
                 prior_cost: Callable[[int, int], float] | None = None, explore_every: int = 16) -> None:
        """``prior_cost(batch, k)``: a step's cost relative to a plain step of that batch, before any is
        measured (default: k + 1 forwards' worth). ``explore_every``: every this many steps, one more draft than the
        best is tried (two steps) or, every other time, fewer: one fewer, or every other time none (two plain
        steps) (the wait doubles, up to 16x, while explorations change nothing). A k below the best that was never
        timed at a batch size is tried once."""
        if policy not in POLICIES:
            raise ValueError(f"speculative_policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.max_k, self.policy = max_k, policy
        self.prior_cost = prior_cost or (lambda b, k: 1.0 + k)
        self.explore_every = explore_every
        self.times: dict[tuple[int, int], float] = {}  # (batch, k) -> mean of recent steady step seconds
        self._samples: dict[tuple[int, int], collections.deque] = {}
        self.tries = [0.0] * max_k  # engine-wide, per depth: drafts verified at that depth
        self.accepts = [0.0] * max_k
        self.rows: dict[str, tuple[list[float], list[float]]] = {}  # request -> (tries, accepts) per depth
        self.unsure_tries = [0] * max_k  # engine-wide, per depth: unsure drafts verified, and accepted
        self.unsure_accepts = [0] * max_k
        self.since_explored = 0
        self._explorations = 0
        self._exploring: int | None = None  # the k of an exploration's second step
        self._explore_base = explore_every
        self._best_before = -1  # the best k when the last exploration began
        # the k chosen by the objective last time; plain at first, so drafting must win by the switching margin
        # before it is chosen: that margin is what pays for the costs no step time shows (a request's blocks
        # catching up over its whole prompt, inside a prefill step; rows of one batch ending steps apart)
        self._current = 0
        self._cold = 0  # full-depth steps of the cold start so far
        self.stats = PolicyStats()

    # ------------------------------------------------------------------ estimates
    def acceptance(self, request_id: str, optimistic: bool = False) -> list[float]:
        """Row's chance, per depth j, that draft j is accepted given drafts 1..j-1 were. ``optimistic`` adds
        an uncertainty bonus that shrinks as the engine verifies drafts at that depth: a depth rarely tested is
        given the benefit of the doubt when the policy weighs exploring it (only drafting can test it); the
        choice itself uses the plain estimate."""
        own_t, own_a = self.rows.get(request_id, ([0.0] * self.max_k, [0.0] * self.max_k))
        out, prior = [], 0.5
        for j in range(self.max_k):
            # engine-wide, shrunk towards the depth above (deeper drafts are rarely tested, and their acceptance
            # is much like the previous depth's), then the row's own record shrunk towards that
            overall = (self.accepts[j] + 2.0 * prior) / (self.tries[j] + 2.0)
            prior = overall
            if optimistic:
                overall = min(1.0, overall + _BONUS / math.sqrt(1.0 + self.tries[j]))
            out.append((own_a[j] + _PSEUDO * overall) / (own_t[j] + _PSEUDO))
        return out

    def expected_by_k(self, request_id: str, optimistic: bool = False) -> list[float]:
        """Tokens a step with k = 0..K drafts is expected to give this row (1 + expected accepted drafts)."""
        out, chain = [1.0], 1.0
        for a in self.acceptance(request_id, optimistic):
            chain *= a
            out.append(out[-1] + chain)
        return out

    def expected_tokens(self, request_id: str, k: int, optimistic: bool = False) -> float:
        """Tokens a step with k drafts is expected to give this row."""
        return self.expected_by_k(request_id, optimistic)[k]

    def cost(self, batch: int, k: int) -> float:
        """A step of ``batch`` rows drafting ``k``, relative to a plain step of ``batch`` rows (only ratios
        within one batch size are compared). Measured at this batch size where both are; else the ratio
        measured at the nearest batch size that has both; else the weights-read prior's ratio, anchored at the
        nearest k measured at this batch size."""
        plain = self.times.get((batch, 0))
        if plain is not None and (batch, k) in self.times:
            return self.times[(batch, k)] / plain
        sizes = [b for (b, o) in self.times if o == k and (b, 0) in self.times]
        if k and sizes:  # a batch size close by has measured it: the ratio changes slowly with the batch. Taken
            # as measured, not scaled by the prior's trend over batch sizes: where per-step overheads dominate
            # (small models) that trend is wrong by more than the ratios differ between neighbouring sizes
            near = min(sizes, key=lambda b: (abs(b - batch), b))
            return self.times[(near, k)] / self.times[(near, 0)]
        measured = [o for o in range(self.max_k + 1) if (batch, o) in self.times]
        if plain is not None and measured:
            other = min(measured, key=lambda o: abs(o - k))  # the nearest: the prior's ratio is least wrong there
            return self.times[(batch, other)] / plain * self.prior_cost(batch, k) / self.prior_cost(batch, other)
        return self.prior_cost(batch, k)

    def stop_unsure(self) -> tuple[bool | None, ...]:
        """Per depth: True, a row stops drafting at an unsure draft; False, unsure drafts are verified and
        counted; None, the evidence is in that they pass often enough (confidence is then not even measured).
        Empty for the fixed policy."""
        if self.policy != "adaptive":
            return ()
        out: list[bool | None] = []
        for a, t in zip(self.unsure_accepts, self.unsure_tries):
            stop = (a + 1) / (t + 2) < UNSURE_STOP_BELOW
            out.append(True if stop else (None if t >= _UNSURE_EVIDENCE else False))
        return tuple(out)

    # ------------------------------------------------------------------ choosing
    def choose(self, request_ids: list[str]) -> int:
        """The number of drafts for a decode step over these rows."""
        if self.max_k == 0 or not request_ids:
            return 0
        if self.policy == "fixed":
            return self._chose(self.max_k, request_ids, explored=False)
        b = len(request_ids)
        # The first decode steps: full depth until one is timed in the steady state (the first has blocks to
        # catch up on; two steps at most), then plain steps until one is timed (the second), so that both ends are measured, not
        # guessed (the weights-read prior overstates a verify's cost where per-step overheads dominate: small
        # models). A new batch size later borrows the ratios of the nearest one measured.
        if self._cold < 2 and not any(o == self.max_k for _, o in self.times):
            # (twice at most: a step whose unsure drafts were cut is not timed, and drafts that are always
            # unsure are cut every time)
            self._cold += 1
            return self._chose(self.max_k, request_ids, explored=True)
        if not any(o == 0 for _, o in self.times):
            return self._chose(0, request_ids, explored=True)
        # the choice takes the acceptance as estimated; the optimistic one (a rarely tested depth given the benefit
        # of the doubt) only decides whether exploring one draft more is worth its catch-up (below): choosing by
        # it made deep drafts look a few per cent better than they were at every step, not only when untested
        costs = [self.cost(b, k) for k in range(self.max_k + 1)]
        expected = self._expected_sum(request_ids)
        rates = [expected[k] / costs[k] for k in range(self.max_k + 1)]
        k = max(range(self.max_k + 1), key=lambda i: (rates[i], -i))
        if rates[k] < _SWITCH_GAIN * rates[self._current]:  # switching costs catch-up steps: only for a clear gain
            k = self._current
        self._current = k
        if self._exploring is not None:  # the second step of an exploration: timed (see Engine.step)
            k, self._exploring = self._exploring, None
            return self._chose(k, request_ids, explored=True, predicted=expected[k])
        if k > 0 and not any(o == k - 1 for _, o in self.times):  # one draft fewer was never timed: it may win
            # (its blocks ran last step: timed at once)
            return self._chose(k - 1, request_ids, explored=True, predicted=expected[k - 1])
        # Every so often, one draft more than the best (two steps: the first has deeper blocks to catch up on,
        # the second is timed) or, every other time, fewer (one draft fewer: one step, timed at once; or none:
        # two plain steps): so that a text that became predictable is noticed, and a cost measured once, on a
        # slow step, is measured again.
        self.since_explored += 1
        if self.since_explored >= self.explore_every:
            self.since_explored = 0
            self._explorations += 1
            up = (self._explorations % 2 == 1 or k == 0) and k < self.max_k
            # downwards, one draft fewer or, every other time, none: the plain step's time is what every other
            # cost is measured against, so it must stay as fresh as the best k's own
            down = 0 if (self._explorations // 2) % 2 == 1 else k - 1  # (unused when up: k == 0 is always up)
            # an exploration that changes nothing makes the next one wait twice as long (at most 16x)
            self.explore_every = (self._explore_base if k != self._best_before
                                  else min(16 * self._explore_base, 2 * self.explore_every))
            self._best_before = k
            if (up and self.tries[k] >= _HOPELESS_EVIDENCE and self.explore_every < 16 * self._explore_base
                    and self._expected_sum(request_ids, optimistic=True)[k + 1] / costs[k + 1] < _HOPELESS * rates[k]):
                # even the optimistic estimate, from enough drafts, puts one draft more far below the best: it is
                # tried only at the longest wait, as its first step has every idle block to catch up on (over a
                # whole window of positions per row, which costs several plain steps)
                return self._chose(k, request_ids, explored=False, predicted=expected[k])
            if up:
                self._exploring = k + 1
                return self._chose(k + 1, request_ids, explored=True, predicted=expected[k + 1])
            if down == 0:  # (two plain steps: the second is timed)
                self._exploring = 0
            return self._chose(down, request_ids, explored=True, predicted=expected[down])
        return self._chose(k, request_ids, explored=False, predicted=expected[k])

    def _expected_sum(self, request_ids: list[str], optimistic: bool = False) -> list[float]:
        """Tokens a step with k = 0..K drafts is expected to give these rows together."""
        return [sum(col) for col in zip(*(self.expected_by_k(r, optimistic) for r in request_ids))]

    def _chose(self, k: int, request_ids: list[str], explored: bool, predicted: float | None = None) -> int:
        """Record the choice; ``predicted``: the rows' expected tokens at k, where the caller computed them."""
        if k == 0 and self.policy == "adaptive":
            # a plain step tells nothing new about a row's drafts, but its record ages all the same, towards the
            # engine-wide figure: else a row whose first drafts failed would keep its verdict (and stay plain)
            # however long it ran without drafting
            for r in request_ids:
                if r in self.rows:
                    _age(*self.rows[r])
        self.stats.steps_by_k[k] = self.stats.steps_by_k.get(k, 0) + 1
        self.stats.explored += explored
        if predicted is None:
            predicted = sum(self.expected_tokens(r, k) for r in request_ids)
        self.stats.predicted_tokens += predicted / len(request_ids)
        return k

    # ------------------------------------------------------------------ learning
    def observe_step(self, batch: int, k: int, seconds: float) -> None:
        """A decode step's wall time, in the steady state: the engine passes no step that also prefilled, nor
        one whose MTP blocks had positions to catch up on (a block that did not run in the step before). The
        cost is the mean of the last few without those slower than twice their median: throughput is a mean, so a
        median would hide the slower steps that bigger verifies have more of, while a collection pause or another
        process taking the cores for a moment should not count."""
        window = self._samples.setdefault((batch, k), collections.deque(maxlen=_TIME_SAMPLES))
        window.append(seconds)
        ordered = sorted(window)
        if len(ordered) < 3:  # too few to tell an outlier: the fastest, as a cost overstated is never re-measured
            # (that k is not chosen again) while one understated is corrected by the steps that choose it
            self.times[(batch, k)] = ordered[0]
            return
        median = ordered[len(ordered) // 2]
        kept = [x for x in ordered if x <= 2 * median]
        self.times[(batch, k)] = sum(kept) / len(kept)

    def observe_row(self, request_id: str, drafted: int, accepted: int, unsure: list[bool] | None = None,
                    cut: bool = False) -> None:
        """What one row's verify did: ``drafted`` drafts, the first ``accepted`` of them accepted; ``unsure``
        per draft, whether it was below the confidence floor; ``cut``: the row stopped drafting at an unsure
        draft before the step's k, which counts as that depth's rejection (unsure drafts are cut only where
        they were seen to fail). Depths past the first rejection were never tested: they count for nothing."""
        tries, accepts = self.rows.setdefault(request_id, ([0.0] * self.max_k, [0.0] * self.max_k))
        tested = min(drafted + (cut and accepted == drafted and drafted < self.max_k), accepted + 1)
        _age(tries, accepts)
        for j in range(tested):
            ok = j < accepted
            tries[j] += 1
            accepts[j] += ok
            self.tries[j] += 1
            self.accepts[j] += ok
            if unsure and j < len(unsure) and unsure[j]:  # (a cut draft is not in ``unsure``: no circularity)
                self.unsure_tries[j] += 1
                self.unsure_accepts[j] += ok

    def observe_tokens(self, tokens_per_row: float) -> None:
        """The tokens the last chosen step gave per row (predicted vs realised, in :attr:`stats`)."""
        self.stats.realised_tokens += tokens_per_row

    def forget(self, request_id: str) -> None:
        self.rows.pop(request_id, None)
