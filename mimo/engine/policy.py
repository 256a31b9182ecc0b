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

When the batch is closed (nothing waits to be admitted, as at the end of an offline batch), tokens per
second of a step is the wrong aim: the batch ends when its last row does, and rows that accept different numbers of
drafts finish steps apart, the last ones decoding in small, costly steps. The policy then minimises the expected
time until the last row finishes instead:

    T(k) = catch-up(k) + cost(B, k) * max over rows of (R_r / m_r(k) + z_B * s_r(k))

with R_r the tokens row r may still produce, m_r and s_r^2 the mean and variance of its tokens per step at k
(its acceptance chain), z_B the expected largest of B standard normals, and catch-up(k) the blocks' catch-up
over every position they have not run on (a new request's whole prompt, up to :func:`mimo.engine.speculative.reach`):
a fixed part plus a part per position, fitted to catch-up steps timed by the engine's own clock. T(0) is
cost(B, 0) * max R_r. A short request whose blocks must catch up over a long prompt is then decoded plain; a long
one drafts.

Whatever the policy decides, output is what the verification makes it: greedy equals plain greedy and
sampling stays exact (rejection sampling); the policy changes speed only. ``fixed`` always drafts K.
"""

from __future__ import annotations

import collections
import functools
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

POLICIES = ("adaptive", "fixed")

DRAFT_CONFIDENCE_FLOOR = 0.1
"""The runner stops drafting a row (adaptive policy) at the first depth whose drafted token has less than this
probability under its own MTP block: the target would rarely agree, and the deeper drafts depend on it."""

UNSURE_STOP_BELOW = 0.3
"""Unsure drafts are cut at a depth once their acceptance there (Laplace estimate) is below this."""

_UNSURE_EVIDENCE = 64  # unsure drafts verified at a depth after which, if they pass, they are no longer looked at
_UNSURE_MIN = 16  # unsure drafts verified at a depth before they may be cut there: a cut is never verified, so cutting
# on a couple of unlucky ones stopped drafts that passed 78% of the time, for the rest of the run (mimo-nano, batch 1)
_UNSURE_RECHECK = 8  # every this many steps, a depth where unsure drafts are cut verifies them instead (see stop_unsure)
_BONUS = 0.5  # the optimistic acceptance's bonus at a depth never tested (it falls as 1/sqrt(1 + drafts tested))
_RECHECK = 8  # steps a clear choice stands for before it is weighed again
_RECHECK_PLAIN = 32  # the same for a clear choice of plain steps: nothing is learnt about drafts while they last (an
# exploration's drafts end the wait), and at batch 8 on mimo-nano weighing every 8 steps cost ~1% of the time
_CLEAR = 1.1  # a choice is clear when the runner-up's rate is at least this factor below it
_CLOSE_STEPS = 3  # steps an exploration of a close call times (one for one that is not: see choose)
_SWITCH_GAIN = 1.03  # the objective's k changes only for at least this gain in expected tokens/s
_PSEUDO = 4.0  # how many observations the engine-wide acceptance counts as, for a row's own estimate
_PSEUDO_FINISH = 32.0  # the same, where the slowest row's estimate sets a closed batch's end: the largest of
# several rows' estimates from a few drafts each is mostly their noise (a new request's first drafts, on text
# like its prompt, are often rejected), so a row must show more before it is taken to be slower than the rest
_DECAY = 0.9  # each new step of a row weighs its older ones by this (acceptance drifts with the text)
_HOPELESS = 0.9  # an exploration upwards whose optimistic rate is below this fraction of the best's waits longest
_HOPELESS_EVIDENCE = 32  # drafts verified at that depth before it can be judged so (a few unlucky ones are not)
_FAILING = 0.3  # drafts accepted less than this at a depth (optimistically) fail there: see _catchup_affordable
_TIME_SAMPLES = 15  # step times kept per (batch, drafts): their mean, less outliers, is the cost
_STALE_KEEP = 3  # times kept per (batch, drafts) however old they are: see observe_step
_STALE_STEPS = 64  # a step time older than this many decode steps is dropped when a new one of its kind comes
_EXPLORE_SHARE = 0.05  # the most of the time since the last exploration that an exploration's catch-up may cost
_CATCHUP_SAMPLES = 15  # catch-up steps kept: the line fitted to them (seconds against positions) is its cost

PLAIN_SETTLE_STEPS = 3
"""Plain steps after drafting that the engine does not time: the first few run slower while the trunk's weights
come back into the CPU's caches (drafting touched more experts and the MTP blocks). Timed from the second, plain
steps of a small model whose weights nearly fit in the caches looked much dearer than they run in a plain spell,
and the policy drafted where plain steps were faster (benchmarks/README.md, the speculation policy, 2026-12-02)."""


def _fit_line(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """(intercept, slope) of seconds against positions, both >= 0: least squares where the positions vary enough
    to tell the two apart, else through the origin (the median seconds per position)."""
    if not points:
        return None
    xs = [float(x) for x, _ in points]
    ys = [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if len(points) >= 3 and var > 0 and max(xs) >= 2 * min(xs):
        slope = sum((x - mx) * (y - my) for x, y in points) / var
        if slope >= 0 and my - slope * mx >= 0:
            return my - slope * mx, slope
    return 0.0, statistics.median(y / x for x, y in points)


@functools.cache
def _expected_max_normal(n: int) -> float:
    """The expected largest of n standard normal draws (Blom's approximation; 0 for one)."""
    return statistics.NormalDist().inv_cdf((n - 0.375) / (n + 0.25)) if n > 1 else 0.0


@dataclass
class _Record:
    """A row's drafts verified and accepted per depth, weighed by :data:`_DECAY` once per decode step since: every
    decode step takes every decoding row, so the weight is applied when the record is next read or added to
    (``step``: the decode steps it has been weighed for), not row by row at every step."""

    tries: list[float]
    accepts: list[float]
    step: int

    def aged(self, step: int) -> _Record:
        if step > self.step:
            w = _DECAY ** (step - self.step)
            self.tries = [t * w for t in self.tries]
            self.accepts = [a * w for a in self.accepts]
            self.step = step
        return self


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
                 prior_cost: Callable[[int, int], float] | None = None, explore_every: int = 16,
                 window: int | None = None) -> None:
        """``prior_cost(batch, k)``: a step's cost relative to a plain step of that batch, before any is
        measured (default: k + 1 forwards' worth). ``window``: the MTP blocks' sliding window, which bounds how
        far back a block catches up (None: catch-up is not costed). ``explore_every``: every this many steps, one
        more draft than the
        best is tried (two steps) or, every other time, fewer: one fewer, or every other time none (two plain
        steps) (the wait doubles, up to 16x, while explorations change nothing). A k below the best that was never
        timed at a batch size is tried once."""
        if policy not in POLICIES:
            raise ValueError(f"speculative_policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.max_k, self.policy = max_k, policy
        self.prior_cost = prior_cost or (lambda b, k: 1.0 + k)
        self.explore_every = explore_every
        self.times: dict[tuple[int, int], float] = {}  # (batch, k) -> mean of recent steady step seconds
        self._timed: set[int] = set()  # the k's in times, at any batch size (asked at every step)
        self._samples: dict[tuple[int, int], collections.deque] = {}  # (batch, k) -> (decode step, seconds)
        self.tries = [0.0] * max_k  # engine-wide, per depth: drafts verified at that depth
        self.accepts = [0.0] * max_k
        self.rows: dict[str, _Record] = {}  # request -> its drafts verified and accepted per depth
        self._steps = 0  # decode steps chosen so far (each ages every row's record once: _Record)
        self.unsure_tries = [0] * max_k  # engine-wide, per depth: unsure drafts verified, and accepted
        self.unsure_accepts = [0] * max_k
        self._unsure_asked = 0  # stop_unsure calls (steps) so far
        self.since_explored = 0
        self._afford_at = 0  # since_explored at which an exploration upwards found too dear is priced again
        self._explorations = 0
        self._exploring: int | None = None  # the k of an exploration's next step
        self._explore_left = 0  # the exploration's steps still to come at that k
        self._explore_base = explore_every
        self._best_before = -1  # the best k when the last exploration began
        # the k chosen by the objective last time; plain at first, so drafting must win by the switching margin
        # before it is chosen: that margin is what pays for the costs no step time shows (a request's blocks
        # catching up over its whole prompt, inside a prefill step; rows of one batch ending steps apart)
        self._current = 0
        self._current_rows: list[str] = []  # the rows _current was chosen for
        self._cold = 0  # one-draft steps of the cold start so far
        self.window = window
        self.ran: dict[str, list[int]] = {}  # request -> per block, the committed length when it last ran
        self._positions: dict[str, int] = {}  # request -> its committed length at the step being chosen
        self._catchup: collections.deque = collections.deque(maxlen=_CATCHUP_SAMPLES)  # (batch, k, s, positions)
        self._cb: list[int] | None = None  # catch-up positions per k of the step being chosen
        self._cb_rows: list[str] = []
        self._hold = 0  # steps the held choice still stands (see choose)
        self._held: tuple[list[str], tuple[list[float], list[float], list[float]]] = ([], ([], [], []))
        self._catchup_fit: tuple[float, float] | None | bool = False  # catchup_seconds()' line (False: to refit)
        self.stats = PolicyStats()

    # ------------------------------------------------------------------ estimates
    def acceptance(self, request_id: str, optimistic: bool = False,
                   overall: list[float] | None = None, pseudo: float = _PSEUDO) -> list[float]:
        """Row's chance, per depth j, that draft j is accepted given drafts 1..j-1 were. ``optimistic`` adds
        an uncertainty bonus that shrinks as the engine verifies drafts at that depth: a depth rarely tested is
        given the benefit of the doubt when the policy weighs exploring it (only drafting can test it); the
        choice itself uses the plain estimate. ``overall``: :meth:`engine_acceptance`, where already computed."""
        rec = self.rows.get(request_id)
        if rec is None:
            own_t = own_a = [0.0] * self.max_k
        else:
            own_t, own_a = rec.aged(self._steps).tries, rec.accepts
        if overall is None:
            overall = self.engine_acceptance(optimistic)
        return [(own_a[j] + pseudo * overall[j]) / (own_t[j] + pseudo) for j in range(self.max_k)]

    def engine_acceptance(self, optimistic: bool = False) -> list[float]:
        """Per depth, the engine-wide acceptance every row's own record is shrunk towards."""
        out, prior = [], 0.5
        for j in range(self.max_k):
            # shrunk towards the depth above (deeper drafts are rarely tested, and their acceptance is much like
            # the previous depth's)
            overall = (self.accepts[j] + 2.0 * prior) / (self.tries[j] + 2.0)
            prior = overall
            if optimistic:
                overall = min(1.0, overall + _BONUS / math.sqrt(1.0 + self.tries[j]))
            out.append(overall)
        return out

    def expected_by_k(self, request_id: str, optimistic: bool = False,
                      overall: list[float] | None = None) -> list[float]:
        """Tokens a step with k = 0..K drafts is expected to give this row (1 + expected accepted drafts)."""
        out, chain = [1.0], 1.0
        for a in self.acceptance(request_id, optimistic, overall):
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
        nearest k measured with its plain step (at the nearest batch size that has one)."""
        plain = self.times.get((batch, 0))
        if plain is not None and (batch, k) in self.times:
            return self.times[(batch, k)] / plain
        sizes = [b for (b, o) in self.times if o == k and (b, 0) in self.times]
        if k and sizes:  # a batch size close by has measured it: the ratio changes slowly with the batch. Taken
            # as measured, not scaled by the prior's trend over batch sizes: where per-step overheads dominate
            # (small models) that trend is wrong by more than the ratios differ between neighbouring sizes
            near = min(sizes, key=lambda b: (abs(b - batch), b))
            return self.times[(near, k)] / self.times[(near, 0)]
        # k never timed beside a plain step: the prior's ratio, anchored at the nearest k that was (at the nearest
        # batch size that has one; the prior's ratio is least wrong there)
        anchors = [(b, o) for (b, o) in self.times if o and (b, 0) in self.times]
        if k and anchors:
            near, other = min(anchors, key=lambda bo: (abs(bo[0] - batch), abs(bo[1] - k), bo))
            return (self.times[(near, other)] / self.times[(near, 0)]
                    * self.prior_cost(near, k) / self.prior_cost(near, other))
        return self.prior_cost(batch, k)

    def catchup_positions(self, request_ids: list[str], k: int) -> int:
        """Positions blocks 1..k would catch up on over these rows (at the committed lengths :meth:`choose` was
        given) beyond a steady step's few: each block runs over every position since it last ran for a row (a new
        row's: its whole context), but never further back than its reach."""
        return self._catchup_by_k(request_ids)[k] if k and self.window is not None else 0

    def _catchup_now(self) -> list[int]:
        """:meth:`_catchup_by_k` for the rows of the step being chosen (computed once, when first asked)."""
        if self._cb is None:
            self._cb = self._catchup_by_k(self._cb_rows)
        return self._cb

    def _catchup_by_k(self, request_ids: list[str]) -> list[int]:
        """:meth:`catchup_positions` for k = 0..K at once."""
        out = [0] * (self.max_k + 1)
        if self.window is None:
            return out
        for r in request_ids:
            pos = self._positions.get(r)
            if pos is None:
                continue
            ran = self.ran.get(r)
            lags = [min(pos - (ran[j] if ran is not None else 0), (self.max_k - j) * self.window + 1)
                    for j in range(self.max_k)]  # block j + 1 reaches (K - j) windows back (speculative.reach)
            for k in range(1, self.max_k + 1):
                out[k] += sum(max(0, lag - (k + 1)) for lag in lags[:k])
        return out

    def catchup_seconds(self, positions: int) -> float | None:
        """What catching up over ``positions`` adds to a step: a fixed part (a block back from idle: its cache
        and chain bookkeeping, one more forward) and a part per position, fitted by least squares to the catch-up
        steps timed (each less a steady step of its batch and k). None until one is timed whose steady step is
        known too."""
        if positions <= 0:
            return 0.0
        if self._catchup_fit is False:  # refitted only after a sample, or a steady time it uses, changed
            points = [(n, max(0.0, sec - self.times[(b, k)])) for b, k, sec, n in self._catchup if (b, k) in self.times]
            self._catchup_fit = _fit_line(points)
        if self._catchup_fit is None:
            return None
        fixed, per = self._catchup_fit
        return fixed + per * positions

    def _plain_seconds(self, batch: int) -> float | None:
        """A plain step's time at this batch size, or at the nearest one timed."""
        sizes = [b for (b, o) in self.times if o == 0]
        return self.times[(min(sizes, key=lambda b: (abs(b - batch), b)), 0)] if sizes else None

    def finish_rates(self, request_ids: list[str], remaining: list[int], costs: list[float]) -> list[float]:
        """For a closed batch, per k: the tokens the rows may still produce over the expected time until the last of
        them finishes (in plain steps of this batch, catch-up included), so that it compares with the steady rates."""
        z = _expected_max_normal(len(request_ids))
        steps = [float(max(remaining))] + [0.0] * self.max_k
        overall = self.engine_acceptance()
        for r, rem in zip(request_ids, remaining):
            # tokens a step gives this row at k: 1 + the drafts accepted, j + 1 with probability P(exactly j)
            chain, reach = [1.0], 1.0
            for a in self.acceptance(r, overall=overall, pseudo=_PSEUDO_FINISH):
                reach *= a
                chain.append(reach)  # chain[j]: P(the first j drafts are all accepted)
            mean = second = 1.0
            for k in range(1, self.max_k + 1):
                mean += chain[k]  # E[tokens] = sum_j P(tokens > j) = 1 + sum_j P(>= j accepted)
                second += (2 * k + 1) * chain[k]  # E[tokens^2] = sum_j (2j + 1) P(tokens > j)
                var = max(0.0, second - mean * mean)
                # (at least one step: a row with a token or two left gains nothing from deeper drafts)
                steps[k] = max(steps[k], 1.0, rem / mean + z * math.sqrt(rem * var / mean**3))
        plain = self._plain_seconds(len(request_ids))
        seconds = [self.catchup_seconds(n) for n in self._catchup_now()]
        extra = ([x / plain for x in seconds] if plain and None not in seconds  # type: ignore[operator]
                 else [0.0] * (self.max_k + 1))
        total = float(sum(remaining))
        return [total / max(1e-9, extra[k] + costs[k] * steps[k]) for k in range(self.max_k + 1)]

    def stop_unsure(self) -> tuple[bool | None, ...]:
        """Per depth: True, a row stops drafting at an unsure draft; False, unsure drafts are verified and
        counted; None, the evidence is in that they pass often enough (confidence is then not even measured).
        Empty for the fixed policy. Unsure drafts are cut at a depth only after :data:`_UNSURE_MIN` of them were
        verified there, and where they are cut, every :data:`_UNSURE_RECHECK`-th step verifies them still: a cut
        draft tells nothing about whether it would have passed, so without these a verdict reached early (on text
        unlike the rest) would stand for good."""
        if self.policy != "adaptive":
            return ()
        self._unsure_asked += 1
        recheck = self._unsure_asked % _UNSURE_RECHECK == 0
        out: list[bool | None] = []
        for a, t in zip(self.unsure_accepts, self.unsure_tries):
            stop = t >= _UNSURE_MIN and (a + 1) / (t + 2) < UNSURE_STOP_BELOW and not recheck
            out.append(True if stop else (None if t >= _UNSURE_EVIDENCE else False))
        return tuple(out)

    # ------------------------------------------------------------------ choosing
    def choose(self, request_ids: list[str], positions: list[int] | None = None,
               remaining: list[int] | None = None) -> int:
        """The number of drafts for a decode step over these rows. ``positions``: each row's committed length
        (what its blocks would catch up to). ``remaining``: the tokens each row may still produce, given only when
        the batch is closed (no request waits to be admitted): the choice then minimises the time until the last row
        finishes (module docstring) instead of maximising this step's tokens per second."""
        if self.max_k == 0 or not request_ids:
            return 0
        if self.policy == "fixed":
            return self._chose(self.max_k, request_ids, explored=False)
        if positions is not None:
            self._positions.update(zip(request_ids, positions))
        self._cb_rows = request_ids  # this step's catch-up positions per k: computed when asked (_catchup_now)
        self._cb = None
        b = len(request_ids)
        # The first decode steps: one draft until one is timed in the steady state (the first has a block to
        # catch up on; two steps at most), then plain steps until one is timed (the second), so that drafting's
        # cost is measured, not guessed (the weights-read prior overstates a verify's cost where per-step overheads
        # dominate: small models); deeper drafts' costs are the prior's ratios anchored there until an exploration
        # times them. One draft, not the full depth: a one-off request (`mimo generate`) pays for every step of the
        # cold start, and two full-depth steps whose drafts failed made the README's command 0.90x of the same
        # command without drafts once plain steps had become faster (one draft: 0.96x). An engine's first steps
        # often run slow, so a cost timed once is not enough to judge drafting deeper hopeless (below). A new batch
        # size later borrows the ratios of the nearest one measured.
        if self._cold < 2 and 1 not in self._timed:
            # (twice at most: a step whose unsure drafts were cut is not timed, and drafts that are always
            # unsure are cut every time)
            self._cold += 1
            return self._chose(1, request_ids, explored=True)
        if 0 not in self._timed:
            return self._chose(0, request_ids, explored=True)
        # A clear choice (the runner-up at least _CLEAR below it) stands for _RECHECK steps of the same rows
        # before it is weighed again: the estimates move slowly, and weighing costs a few per cent of a small
        # model's step. The choice takes the acceptance as estimated; the optimistic one (a rarely tested depth
        # given the benefit of the doubt) only decides whether exploring one draft more is worth its catch-up
        # (below): choosing by it made deep drafts look a few per cent better than they were at every step
        weigh = not (self._hold and self._held[0] == request_ids)
        if not weigh:
            self._hold -= 1
            costs, expected, rates = self._held[1]
        else:
            costs = [self.cost(b, k) for k in range(self.max_k + 1)]
            expected = self._expected_sum(request_ids)
            if remaining is not None and self.policy == "adaptive":
                rates = self.finish_rates(request_ids, remaining, costs)
            else:
                rates = [expected[k] / costs[k] for k in range(self.max_k + 1)]
            self._held = (list(request_ids), (costs, expected, rates))
        k = max(range(self.max_k + 1), key=lambda i: (rates[i], -i))
        if weigh:
            ranked = sorted(rates, reverse=True)
            clear = len(ranked) < 2 or ranked[1] * _CLEAR < ranked[0]
            self._hold = ((_RECHECK_PLAIN if k == 0 else _RECHECK) - 1) if clear else 0
        # Switching costs catch-up steps, which the steady rates leave out, and flipping between two close k's on
        # noise pays them again and again: k changes only for a clear gain. Not for the first choice of a closed
        # batch of new rows: it prices the catch-up itself, and the margin kept a new batch at the k its
        # predecessor's last rows ended with (often plain), where drafting from the start was 10% faster.
        fresh = remaining is not None and request_ids != self._current_rows
        if not fresh and rates[k] < _SWITCH_GAIN * rates[self._current]:
            k = self._current
        self._current, self._current_rows = k, request_ids
        if self._exploring is not None:  # an exploration's further steps: timed (see Engine.step)
            k = self._exploring
            self._explore_left -= 1
            if self._explore_left <= 0:
                self._exploring = None
            return self._chose(k, request_ids, explored=True, predicted=expected[k])
        if k > 0 and k - 1 not in self._timed:  # one draft fewer was never timed: it may win
            # (its blocks ran last step: timed at once)
            return self._chose(k - 1, request_ids, explored=True, predicted=expected[k - 1])
        # Every so often, one draft more than the best (two steps: the first has deeper blocks to catch up on,
        # the second is timed) or, every other time, fewer (one draft fewer: one step, timed at once; or none:
        # two plain steps): so that a text that became predictable is noticed, and a cost measured once, on a
        # slow step, is measured again.
        self.since_explored += 1
        up = ((self._explorations + 1) % 2 == 1 or k == 0) and k < self.max_k  # this exploration's direction
        if self.since_explored >= max(self.explore_every, self._afford_at) and (
                not up or self._catchup_affordable(request_ids, k, b, costs, expected, remaining)):
            self.since_explored = self._afford_at = 0
            self._explorations += 1
            # downwards, one draft fewer or, every other time, none: the plain step's time is what every other
            # cost is measured against, so it must stay as fresh as the best k's own
            down = 0 if (self._explorations // 2) % 2 == 1 else k - 1  # (unused when up: k == 0 is always up)
            # an exploration that changes nothing makes the next one wait twice as long (at most 16x). A new best
            # that the old one is within _CLEAR of changes nothing worth exploring for: where two or three k's are
            # that close (mimo-nano's README prompt: fixed k = 1, 2, 3 within 8%) the estimates' noise swaps them
            # every few steps, and resetting the wait at each swap kept 9% of the steps exploring, ~5% of the time
            changed = self._best_before < 0 or (k != self._best_before and rates[self._best_before] * _CLEAR < rates[k])
            self.explore_every = (self._explore_base if changed
                                  else min(16 * self._explore_base, 2 * self.explore_every))
            self._best_before = k
            if (up and self.tries[k] >= _HOPELESS_EVIDENCE and self.explore_every < 16 * self._explore_base
                    and len(self._samples.get((b, k + 1), ())) >= 3  # (a cost timed once may be a slow first step)
                    and self._expected_sum(request_ids, optimistic=True)[k + 1] / costs[k + 1] < _HOPELESS * rates[k]):
                # even the optimistic estimate, from enough drafts and times, puts one draft more far below the best: it is
                # tried only at the longest wait, as its first step has every idle block to catch up on (over a
                # whole window of positions per row, which costs several plain steps)
                return self._chose(k, request_ids, explored=False, predicted=expected[k])
            # A close call (the k explored within _CLEAR of the best, by the estimates) is timed over
            # _CLOSE_STEPS steps, not one: one step's time is ~10% noise, as large as the gap to decide, and a
            # k timed slow once is not chosen again before the next exploration (mimo-nano's README prompt
            # stayed at one draft, its two-draft time 17% above a fixed engine's); and a close call costs little
            # to explore
            other = k + 1 if up else down
            more = _CLOSE_STEPS - 1 if rates[other] * _CLEAR >= rates[k] else 0
            if up or down == 0 or more:  # (up: the first step catches up, the next are timed; plain: the first
                # PLAIN_SETTLE_STEPS are not timed)
                self._exploring, self._explore_left = other, more + (1 if up else PLAIN_SETTLE_STEPS if down == 0 else 0)
            return self._chose(other, request_ids, explored=True, predicted=expected[other])
        return self._chose(k, request_ids, explored=False, predicted=expected[k])

    def _catchup_affordable(self, request_ids: list[str], k: int, batch: int, costs: list[float],
                            expected: list[float], remaining: list[int] | None = None) -> bool:
        """Whether exploring one draft more than k now keeps explorations' catch-up within
        :data:`_EXPLORE_SHARE` of the time since the last one. Its first step catches blocks up over every
        position they have not run on: after a long plain spell, or for new requests, a whole window or prompt
        per row, which can cost several plain steps; the exploration then waits (a short request is never
        explored at that price). Exploring fewer drafts catches up on nothing. Where it is too dear, it is not
        priced again until enough steps have passed to afford it at today's price (pricing reads every row's lag:
        at every step that would cost more than the policy's whole choice).

        In a closed batch (``remaining`` given), where the depth explored has been seen to fail (tested enough, and
        accepted below :data:`_FAILING` even optimistically: what is left to learn is whether that changed), the
        catch-up must also fit in that share of the time until its longest row ends: what an exploration learns pays
        back only over the steps after it, and a short batch (an offline run's 64 tokens at batch 8: ~60 steps,
        where the catch-up costs ~6) ends first; its successors, or longer rows, explore. Drafts that pass are
        explored as before, short batch or not: explorations also re-time a cost measured on a slow step (without
        them mimo-nano's batch 1 stayed at two drafts where three were 13% faster, and batch 4 at one)."""
        seconds, plain = self.catchup_seconds(self._catchup_now()[k + 1]), self._plain_seconds(batch)
        if seconds is None or not plain:
            return True
        price = seconds / plain  # in plain steps
        if (remaining is not None and self.tries[k] >= _HOPELESS_EVIDENCE
                and self.engine_acceptance(optimistic=True)[k] < _FAILING):  # the time until the longest row ends,
            # at k, in plain steps
            rest = max(remaining) * batch / expected[k] * costs[k]
            if rest * _EXPLORE_SHARE < price:
                self._afford_at = self.since_explored + max(remaining)  # (not before these rows have ended)
                return False
        # Explorations that changed nothing have made the wait longer (explore_every); they also shrink the
        # share as much (to 1/16 at the longest wait): at batch 8 on mimo-nano, where plain wins, each
        # exploration's catch-up (every row's context through block 1) costs ~4-6 plain steps; at the full share
        # that took 3-4% of the time, at a quarter of it still ~2%.
        share = _EXPLORE_SHARE * self._explore_base / self.explore_every
        affordable_at = price / (share * costs[k])
        if self.since_explored >= affordable_at:
            return True
        self._afford_at = math.ceil(affordable_at)
        return False

    def _expected_sum(self, request_ids: list[str], optimistic: bool = False) -> list[float]:
        """Tokens a step with k = 0..K drafts is expected to give these rows together."""
        overall = self.engine_acceptance(optimistic)
        return [sum(col) for col in zip(*(self.expected_by_k(r, optimistic, overall) for r in request_ids))]

    def _chose(self, k: int, request_ids: list[str], explored: bool, predicted: float | None = None) -> int:
        """Record the choice; ``predicted``: the rows' expected tokens at k, where the caller computed them."""
        # every decode step ages the rows' records (_Record), a plain one too: it tells nothing new about a row's
        # drafts, but without ageing a row whose first drafts failed would keep its verdict (and stay plain)
        # however long it ran without drafting
        self._steps += 1
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
        process taking the cores for a moment should not count. Times older than :data:`_STALE_STEPS` decode
        steps are dropped when a new one comes: a k the policy left is timed again only by explorations, one step
        at a time, and its fresh time must not be outvoted by ones from before the machine got faster or slower
        (another process sharing the cores for a while slowed every step by a third; the k then left kept its old
        time, and compared with the slowed one, a verify that loses looked like a win for the rest of the run). The
        last :data:`_STALE_KEEP` - 1 stay, stale or not: a k the policy left is otherwise judged on its one newest
        time, and a slow one (10% noise is common) is never corrected, as that k is not chosen again until the next
        exploration, while a fast one is, by the steps that choose it; so one-sample costs kept mimo-nano's batch 1
        at one draft where two were 7% faster."""
        if any(b == batch and o == k for b, o, _, _ in self._catchup):  # the fit subtracts this kind's steady
            self._catchup_fit = False  # time from its samples: refitted only when it changed
        window = self._samples.setdefault((batch, k), collections.deque(maxlen=_TIME_SAMPLES))
        while len(window) >= _STALE_KEEP and window[0][0] < self._steps - _STALE_STEPS:
            window.popleft()
        window.append((self._steps, seconds))
        ordered = sorted(sec for _, sec in window)
        if len(ordered) < 3:  # too few to tell an outlier: the fastest, as a cost overstated is never re-measured
            # (that k is not chosen again) while one understated is corrected by the steps that choose it
            self.times[(batch, k)] = ordered[0]
            self._timed.add(k)
            return
        median = ordered[len(ordered) // 2]
        kept = [x for x in ordered if x <= 2 * median]
        self.times[(batch, k)] = sum(kept) / len(kept)

    def observe_catchup(self, batch: int, k: int, seconds: float, blocks: int | None = None) -> None:
        """A decode step's wall time whose blocks had positions to catch up on (not a steady step): what it took
        beyond a steady step of its batch and k (the drafts it verified), per position caught up, is the catch-up's
        cost. ``blocks``: how many blocks ran (default k; one more than k where the next block's drafts were made,
        found unsure and cut)."""
        blocks = k if blocks is None else blocks
        positions = self._catchup_now()[blocks] if blocks and self.policy == "adaptive" else 0
        if positions > 0:
            self._catchup.append((batch, k, seconds, positions))
            self._catchup_fit = False

    def observe_row(self, request_id: str, drafted: int, accepted: int, unsure: list[bool] | None = None,
                    cut: bool = False) -> None:
        """What one row's verify did: ``drafted`` drafts, the first ``accepted`` of them accepted; ``unsure``
        per draft, whether it was below the confidence floor; ``cut``: the row stopped drafting at an unsure
        draft before the step's k, which counts as that depth's rejection (unsure drafts are cut only where
        they were seen to fail). Depths past the first rejection were never tested: they count for nothing."""
        pos = self._positions.get(request_id)
        if drafted + cut:
            if self._current == 0:
                self._hold = 0  # drafts while plain is held (an exploration's): weighed again at the next step
            if pos is not None:  # the blocks that ran for this row: its drafts', and the cut draft's
                self._catchup_now()  # (the step's catch-up, from the lags before this: observe_catchup reads it after)
                ran = self.ran.setdefault(request_id, [0] * self.max_k)
                for j in range(min(self.max_k, drafted + cut)):
                    ran[j] = pos
        rec = self._record(request_id)  # (aged for this step too: it was chosen before the rows report)
        tries, accepts = rec.tries, rec.accepts
        tested = min(drafted + (cut and accepted == drafted and drafted < self.max_k), accepted + 1)
        for j in range(tested):
            ok = j < accepted
            tries[j] += 1
            accepts[j] += ok
            self.tries[j] += 1
            self.accepts[j] += ok
            if unsure and j < len(unsure) and unsure[j]:  # (a cut draft is not in ``unsure``: no circularity)
                self.unsure_tries[j] += 1
                self.unsure_accepts[j] += ok

    def observe_unmade(self, request_id: str, scored: int, right: int) -> None:
        """Depth-1 drafts block 1 would have made where it sat idle, scored against the tokens committed there
        (:func:`mimo.engine.speculative.draft`'s catch-up evidence): ``right`` of ``scored`` would have been
        accepted. They count as verified drafts of the row's own record, without ageing it (they are older than
        the step that found them, not a step of their own). Engine-wide they count only while fewer than
        :data:`_HOPELESS_EVIDENCE` drafts have been verified at depth 1: they come from where a row sat plain, most
        often the first tokens after its prompt, which block 1 drafts worse than the rest (54% of them right
        against 89% of verified drafts, on mimo-nano at batch 1), so a long-running engine's figure is better
        without them; but a new engine's (`mimo generate`: one request, a closed batch, whose rows lean on the
        engine-wide figure) has nothing else to learn from while it decodes plain."""
        if self.max_k == 0 or scored <= 0:
            return
        rec = self._record(request_id)
        rec.tries[0] += scored
        rec.accepts[0] += right
        if self.tries[0] < _HOPELESS_EVIDENCE:
            self.tries[0] += scored
            self.accepts[0] += right

    def observe_tokens(self, tokens_per_row: float) -> None:
        """The tokens the last chosen step gave per row (predicted vs realised, in :attr:`stats`)."""
        self.stats.realised_tokens += tokens_per_row

    def _record(self, request_id: str) -> _Record:
        """The row's record, aged to now (a new one if it has none)."""
        rec = self.rows.get(request_id)
        if rec is None:
            rec = self.rows[request_id] = _Record([0.0] * self.max_k, [0.0] * self.max_k, self._steps)
        return rec.aged(self._steps)

    def forget(self, request_id: str) -> None:
        self.rows.pop(request_id, None)
        self.ran.pop(request_id, None)
        self._positions.pop(request_id, None)
