"""The speculation policy: drafts per step from measured cost and predicted acceptance (host only, then engine)."""

import random

import pytest
import torch

from mimo import LLM, SamplingParams
from mimo.engine.engine import relative_step_cost
from mimo.engine.policy import PLAIN_SETTLE_STEPS, SpeculationPolicy
from tests.helpers import oracle_model, random_model, tiny_config

GREEDY = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)


def _run(policy, rows, steps, accept, seconds):
    """Drive a policy: ``accept(k)`` drafts accepted of k; ``seconds(k)`` a step's time. Returns chosen k's."""
    chosen = []
    for _ in range(steps):
        k = policy.choose(rows)
        chosen.append(k)
        for r in rows:
            if k:
                policy.observe_row(r, k, accept(k))
        policy.observe_step(len(rows), k, seconds(k))
    return chosen


def test_fixed_always_drafts_the_most():
    p = SpeculationPolicy(3, "fixed")
    assert _run(p, ["a"], 20, lambda k: 0, lambda k: 1.0 + 10 * k) == [3] * 20


def test_drafts_that_are_always_rejected_stop_within_a_few_steps():
    p = SpeculationPolicy(3, explore_every=16)
    chosen = _run(p, ["a", "b"], 64, lambda k: 0, lambda k: 1.0 + 0.5 * k)
    assert chosen[:2] == [1, 0]  # the cold start times the cheapest drafting step and a plain one
    assert all(k == 0 for k in chosen[3:15])
    # afterwards only an exploration (two steps of 1 draft: the second is timed) every 16 steps
    assert sum(k > 0 for k in chosen[3:]) <= 2 * (len(chosen[3:]) // 16 + 1)
    assert max(chosen[3:]) <= 1
    assert p.stats.as_dict()["explored_steps"] >= 2


def test_drafts_that_are_always_accepted_keep_the_most():
    p = SpeculationPolicy(3, prior_cost=lambda b, k: 1.0 + 0.5 * k)
    chosen = _run(p, ["a"], 30, lambda k: k, lambda k: 1.0 + 0.5 * k)
    assert chosen[:2] == [1, 0], chosen  # the cold start times one draft and a plain step
    # deeper drafts are reached by trying one more at a time (each first step is not timed: two steps each); then
    # 3 but for an exploration one draft below (a close call, 1.5 tokens per unit of time against 1.6: timed over
    # three steps)
    assert chosen[6:].count(3) >= len(chosen[6:]) - 3 and min(chosen[6:]) >= 2, chosen


def test_expensive_drafts_lose_to_cheap_steps():
    """Acceptance 1/2 per depth: 3 drafts give 1.875 tokens, 1 gives 1.5; if a 3-draft step costs 3x a plain one
    and a 1-draft step 1.2x, one draft is best (1.25 tokens per unit of time against 0.625 and 1)."""
    p = SpeculationPolicy(3)  # the default prior (k + 1 forwards) is wrong here: measuring corrects it
    g = torch.Generator().manual_seed(0)
    cost = {0: 1.0, 1: 1.2, 2: 2.0, 3: 3.0}
    chosen = []
    for _ in range(300):
        k = p.choose(["a"])
        chosen.append(k)
        if k:
            a = 0
            while a < k and torch.rand((), generator=g) < 0.5:
                a += 1
            p.observe_row("a", k, a)
        p.observe_step(1, k, cost[k])
    assert chosen[100:].count(1) > 0.85 * 200, chosen  # all but the explorations (2 steps in 18) of k=2
    # the prior is replaced by measurements: every k that was run has its measured time
    assert p.cost(1, 1) == pytest.approx(1.2)


def test_acceptance_is_per_request_and_forgotten():
    p = SpeculationPolicy(2)
    for _ in range(20):
        p.observe_row("good", 2, 2)
        p.observe_row("bad", 2, 0)
    good, bad = p.acceptance("good"), p.acceptance("bad")
    assert good[0] > 0.8 and bad[0] < 0.3
    assert p.expected_tokens("good", 2) > p.expected_tokens("bad", 2)
    p.forget("good")
    assert p.acceptance("good")[0] == pytest.approx(p.acceptance("new")[0])


def test_bad_policy_name():
    with pytest.raises(ValueError, match="speculative_policy"):
        SpeculationPolicy(3, "greedy")
    with pytest.raises(ValueError, match="speculative_policy"):
        LLM(random_model(tiny_config()), num_speculative_tokens=1, speculative_policy="sometimes")


def test_prior_cost_grows_with_drafts_and_batch():
    cfg = tiny_config()
    cost = relative_step_cost(cfg)
    assert cost(1, 0) == pytest.approx(1.0)
    assert 1.0 < cost(1, 1) < cost(1, 2) < cost(1, 3)


# --------------------------------------------------------------------------------------------- in the engine


def _always_rejected_model():
    """Every MTP block drafts the target's least likely token (its output norm is negated): greedy rejects all,
    and the drafts are confident under their own blocks, so only the policy's own record can stop them."""
    m = oracle_model(tiny_config(sliding_window=5, num_hidden_layers=6), seed=5)
    with torch.no_grad():
        for blk in m.model.mtp.layers:
            blk.final_layernorm.weight.mul_(-1)
    return m


def _prompts(lengths=(2, 11, 30)):
    g = torch.Generator().manual_seed(4)
    return [torch.randint(0, 128, (n,), generator=g).tolist() for n in lengths]


def _steady_clock(llm):
    """Step times as the prior predicts them (1 ms per plain step; catch-up 20 us a position), not the wall clock:
    the choices are then reproducible on a busy machine (the wall clock is used everywhere else)."""
    pol = llm.engine.policy
    pol.observe_step = lambda batch, k, seconds: SpeculationPolicy.observe_step(pol, batch, k,
                                                                                1e-3 * pol.prior_cost(batch, k))
    # a catch-up step: the steady step and 0.02 plain steps per position caught up
    pol.observe_catchup = lambda batch, k, seconds, blocks=None: SpeculationPolicy.observe_catchup(
        pol, batch, k, 1e-3 * pol.prior_cost(batch, k) + 2e-5 * pol._catchup_now()[k if blocks is None else blocks],
        blocks)


def test_engine_stops_drafting_when_every_draft_is_rejected():
    m = _always_rejected_model()
    plain = [o.outputs[0].token_ids for o in LLM(m).generate(_prompts(), GREEDY)]
    fixed = LLM(m, num_speculative_tokens=3, speculative_policy="fixed").generate(_prompts(), GREEDY)
    assert all(o.stats.accepted == 0 and o.stats.drafted == 3 * o.stats.decode_steps for o in fixed)
    llm = LLM(m, num_speculative_tokens=3)
    _steady_clock(llm)
    outs = llm.generate(_prompts(), GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == plain
    stats = llm.engine.speculation_stats()
    steps = sum(stats["steps_by_k"].values())
    assert stats["policy"] == "adaptive" and steps == 47  # the 3 rows decode together
    # two 1-draft steps (the second is timed), then plain steps but for an exploration (two 1-draft steps)
    # every 16 or more; nothing deeper
    assert stats["steps_by_k"].get(3, 0) == 0 and stats["steps_by_k"].get(2, 0) == 0
    assert stats["steps_by_k"][0] >= steps - 2 - 2 * (steps // 16 + 1)
    assert stats["realised_tokens_per_step"] == pytest.approx(1.0)


def test_engine_keeps_drafting_when_every_draft_is_accepted():
    m = oracle_model(tiny_config(sliding_window=5, num_hidden_layers=6), seed=5)
    llm = LLM(m, num_speculative_tokens=3)
    _steady_clock(llm)
    outs = llm.generate(_prompts(), GREEDY)
    pol = llm.engine.policy
    assert pol.tries[0] > 0 and pol.accepts == pol.tries  # every draft verified was accepted
    # (a request's counts leave out the accepted drafts past its max_tokens, on its last step only)
    assert all(o.stats.drafted - 2 <= o.stats.accepted <= o.stats.drafted for o in outs)
    stats = llm.engine.speculation_stats()
    # every step drafts 3 but the cold start's (two 1-draft steps, the second timed, the first after a change not
    # being steady; plain steps until one is timed, after PLAIN_SETTLE_STEPS) and the climb to 3 (two steps at 2)
    steps = sum(stats["steps_by_k"].values())
    assert stats["steps_by_k"].get(0) == PLAIN_SETTLE_STEPS + 1 and stats["steps_by_k"].get(1) == 2
    assert stats["steps_by_k"][3] >= steps - 6 - PLAIN_SETTLE_STEPS
    # and each step gave its drafts plus one (up to the drafts cut by max_tokens on the last step)
    full = 1 + sum(k * n for k, n in stats["steps_by_k"].items()) / steps
    assert full - 3 / steps <= stats["realised_tokens_per_step"] <= full


def test_rows_of_one_step_can_draft_different_numbers(monkeypatch):
    """A plan may give each row its own number of drafts (DecodeRow.drafts): the verify pads the shorter rows
    (position -1) and greedy output is still plain greedy, over sliding-window layers and mixed prompt
    lengths."""
    import dataclasses

    import mimo.engine.runner as runner

    m = oracle_model(tiny_config(sliding_window=5, num_hidden_layers=6), seed=6, draft_noise=(0.3, 0.6, 0.9))
    plain = [o.outputs[0].token_ids for o in LLM(m).generate(_prompts(), GREEDY)]
    mixed = []
    real = runner.greedy_verify  # a greedy batch's verify (rejection_sample's verdict from the argmaxes)

    def spy(drafts, target_ids, n_drafts=None):
        if n_drafts is not None:
            mixed.append(n_drafts.tolist())
        return real(drafts, target_ids, n_drafts)

    monkeypatch.setattr(runner, "greedy_verify", spy)
    llm = LLM(m, num_speculative_tokens=3, speculative_policy="fixed")
    execute = llm.engine.runner.execute
    turn = iter(range(10**6))

    def uneven(plan):  # rows draft 3, 2, 1, 0, ... drafts in turn
        plan.decode = [dataclasses.replace(r, drafts=(r.drafts - next(turn)) % 4) for r in plan.decode]
        return execute(plan)

    llm.engine.runner.execute = uneven
    outs = llm.generate(_prompts(), GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == plain
    assert any(len(set(n)) > 1 for n in mixed), mixed  # the padded verify ran
    assert all(set(o.stats.drafts_per_step) > {0} for o in outs)


def test_unsure_rows_stop_only_together(monkeypatch):
    """Where unsure drafts are cut, drafting stops at a depth only when every row still drafting is unsure: a
    verify is as wide as its longest row, so cutting one row would save nothing."""
    import mimo.engine.runner as runner

    m = oracle_model(tiny_config(sliding_window=5, num_hidden_layers=6), seed=6, draft_noise=(0.3, 0.6, 0.9))
    with torch.no_grad():
        m.lm_head.weight.mul_(30)  # peaked softmaxes (same argmax): the blocks' confidence varies by row
    plain = [o.outputs[0].token_ids for o in LLM(m).generate(_prompts(), GREEDY)]
    monkeypatch.setattr(runner, "DRAFT_CONFIDENCE_FLOOR", 0.45)
    monkeypatch.setattr(SpeculationPolicy, "stop_unsure", lambda self: (True,) * self.max_k)
    monkeypatch.setattr(SpeculationPolicy, "choose", lambda self, rows, *_: self.max_k)
    widths = []
    real = runner.greedy_verify  # (greedy batches: the verify's verdict from the argmaxes)
    monkeypatch.setattr(runner, "greedy_verify", lambda d, t, n=None: (
        widths.append((d.shape[1], None if n is None else n.tolist())), real(d, t, n))[1])
    llm = LLM(m, num_speculative_tokens=3)
    outs = llm.generate(_prompts(), GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == plain
    assert all(n is None for _, n in widths)  # every row of a step kept the same number of drafts
    assert {w for w, _ in widths} > {3}  # and some steps stopped early, for every row together
    assert llm.engine.policy.stats.rows_cut_short > 0


def test_unsure_drafts_are_cut_only_where_they_fail():
    p = SpeculationPolicy(3)
    assert p.stop_unsure() == (False, False, False)  # nothing known: verify them
    for _ in range(5):
        p.observe_row("a", 3, 1, [False, True, True])  # depth 1 sure and accepted; depth 2 unsure and rejected
        p.observe_row("b", 2, 2, [True, False])  # depth 1 unsure and accepted
    assert p.stop_unsure() == (False, False, False)  # five failures are not enough to cut on for good
    for _ in range(11):
        p.observe_row("a", 3, 1, [False, True, True])
    verdicts = [p.stop_unsure() for _ in range(16)]  # depth 2 cut, but verified still at every 8th step
    assert verdicts.count((False, True, False)) == 14 and verdicts.count((False, False, False)) == 2
    for _ in range(60):  # plenty of evidence that unsure drafts at depth 1 pass: they are no longer measured
        p.observe_row("b", 2, 2, [True, False])
    assert p.stop_unsure() in ((None, True, False), (None, False, False))
    assert SpeculationPolicy(3, "fixed").stop_unsure() == ()


def test_unsure_drafts_once_cut_are_uncut_when_rechecks_find_they_pass():
    p = SpeculationPolicy(3)
    for _ in range(16):
        p.observe_row("a", 2, 1, [False, True])  # depth 2: unsure and rejected, enough to cut there
    assert p.stop_unsure()[1] is True
    for _ in range(96):  # the text changed: the unsure drafts the rechecks verify now pass (12 of them)
        if p.stop_unsure()[1] is not True:
            p.observe_row("a", 2, 2, [False, True])
    assert p.stop_unsure()[1] is not True  # (None: enough evidence that they pass to stop measuring)


def test_engine_speculation_stats_without_drafts():
    llm = LLM(random_model(tiny_config()))
    llm.generate([1, 2, 3], SamplingParams(max_tokens=4, temperature=0))
    assert llm.engine.speculation_stats()["steps_by_k"] == {}


def _warm(p, batch, seconds):
    """Step times as if measured: ``seconds[k]`` for a steady step of ``batch`` rows drafting k."""
    for k, s in seconds.items():
        for _ in range(3):
            p.observe_step(batch, k, s)


def test_a_closed_batch_is_not_drafted_for_its_fastest_rows():
    """Half the rows accept every draft, half none. Per step, one draft gives 12 tokens for 1.45 plain steps' time
    (8.3 against 8: drafting wins); but a closed batch ends with its slowest rows, which one draft does not speed
    up, so it takes 1.45x as long: the policy decodes it plain, and drafts it while requests wait."""
    rows = [f"r{i}" for i in range(8)]
    p = SpeculationPolicy(1)
    p._cold = 2
    _warm(p, 8, {0: 1.0, 1: 1.45})
    for _ in range(30):
        for r in rows:
            p.observe_row(r, 1, 1 if r < "r4" else 0)
    assert p.choose(rows) == 1  # an open batch: this step's tokens per second
    p._current = 0
    assert p.choose(rows, remaining=[64] * 8) == 0  # a closed one: the time until its last row ends
    # where every row accepts, the closed batch drafts too
    q = SpeculationPolicy(1)
    q._cold = 2
    _warm(q, 8, {0: 1.0, 1: 1.45})
    for _ in range(30):
        for r in rows:
            q.observe_row(r, 1, 1)
    assert q.choose(rows, remaining=[64] * 8) == 1


def test_catch_up_over_a_long_prompt_is_paid_only_by_a_long_request():
    """A new row's blocks first catch up over its whole context (up to their reach): 0.05 plain steps per
    position here. For 16 tokens left that costs more than drafting saves; for 512 it does not."""
    p = SpeculationPolicy(1, window=128)
    p._cold = 2
    _warm(p, 1, {0: 1.0, 1: 1.3})
    for _ in range(40):
        p.observe_row("seen", 1, 1)  # acceptance near 1: a 1-draft step gives ~2 tokens for 1.3
    p._catchup.append((1, 1, 1.3 + 0.05 * 100, 100))  # a catch-up step timed: 100 positions for 5 plain steps
    assert p.catchup_seconds(100) == pytest.approx(5.0)
    assert p.catchup_positions(["new"], 1) == 0  # no position known yet
    short = p.choose(["new"], positions=[128], remaining=[16])
    p._current = 0
    long = p.choose(["new"], positions=[128], remaining=[512])
    assert (short, long) == (0, 1)
    # once its blocks ran, the catch-up is a steady step's few positions
    p.observe_row("new", 1, 1)
    assert p.catchup_positions(["new"], 1) == 0
    p.forget("new")
    assert "new" not in p.ran


@pytest.mark.parametrize("always_right", [True, False])
def test_an_idle_block_scores_the_drafts_it_did_not_make(monkeypatch, always_right):
    """After plain steps, block 1 catches up over the tokens they generated; its argmax there is scored against
    them (greedy), once, as drafts it would have made: all right for an oracle's blocks, all wrong for blocks
    that draft the least likely token. Steady drafting steps add no such evidence."""
    m = oracle_model(tiny_config(sliding_window=5, num_hidden_layers=6), seed=5) if always_right \
        else _always_rejected_model()
    prompt = _prompts((5,))[0]
    plain = LLM(m).generate([prompt], GREEDY)[0].outputs[0].token_ids
    steps = iter([0] * 12 + [1] * 100)
    monkeypatch.setattr(SpeculationPolicy, "choose", lambda self, rows, *_: next(steps))
    seen = []
    monkeypatch.setattr(SpeculationPolicy, "observe_unmade", lambda self, r, n, right: seen.append((n, right)))
    out = LLM(m, num_speculative_tokens=1).generate([prompt], GREEDY)[0]
    assert out.outputs[0].token_ids == plain
    assert len(seen) == 1 and seen[0][0] >= 4, seen  # (a window back at most: speculative.reach)
    assert seen[0][1] == (seen[0][0] if always_right else 0)


def test_catch_up_has_a_fixed_part_and_a_part_per_position():
    """A block back from idle costs something however few positions it catches up on: fitted from catch-up steps
    of different sizes, a short catch-up is not priced as a long one's cost per position."""
    p = SpeculationPolicy(1, window=128)
    _warm(p, 4, {0: 1e-3, 1: 2e-3})
    for n in (50, 200, 800):
        p._catchup.append((4, 1, 2e-3 + 2e-3 + 1e-5 * n, n))
    assert p.catchup_seconds(0) == 0.0
    assert p.catchup_seconds(100) == pytest.approx(2e-3 + 1e-3)
    assert p.catchup_seconds(1000) == pytest.approx(2e-3 + 1e-2)


def test_an_exploration_whose_drafts_are_all_cut_still_prices_its_catch_up(monkeypatch):
    """Where every draft is unsure and cut (MTP blocks that draft noise), an exploration's step verifies nothing: a
    plain step, plus block 1 catching up over every row's context. Its cost is still the catch-up's (beyond a plain
    step): otherwise the catch-up is never priced, and explorations that only catch up are never found dear."""
    m = random_model(tiny_config(sliding_window=5, num_hidden_layers=4), seed=3)
    monkeypatch.setattr(SpeculationPolicy, "stop_unsure", lambda self: (True,) * self.max_k)
    llm = LLM(m, num_speculative_tokens=2)
    pol = llm.engine.policy
    real, steps = pol.choose, iter(range(10**6))

    def choose(rows, positions=None, remaining=None):
        real(rows, positions, remaining)  # (the rows' positions, and so their catch-up, as the policy sees them)
        return 1 if next(steps) in (20, 40) else 0

    pol.choose = choose
    outs = llm.generate(_prompts((9, 14)), GREEDY)
    assert all(o.stats.drafted == 0 for o in outs) and pol.stats.rows_cut_short >= 4  # every draft was cut
    cut = [(k, n) for _, k, _, n in pol._catchup if k == 0]
    assert len(cut) == 2 and all(n > 0 for _, n in cut), list(pol._catchup)
    assert pol.catchup_seconds(100) is not None


def test_a_steady_step_whose_drafts_are_all_cut_is_timed_as_its_k(monkeypatch):
    """Where every draft is unsure and cut, a steady drafting step is a plain step plus block 1: it is timed as a step
    of its k, what choosing k costs. Left untimed, a k timed once on a fast step went on being chosen with every draft
    cut and was never re-timed (MTP blocks that draft noise)."""
    m = random_model(tiny_config(sliding_window=5, num_hidden_layers=4), seed=3)
    monkeypatch.setattr(SpeculationPolicy, "stop_unsure", lambda self: (True,) * self.max_k)
    llm = LLM(m, num_speculative_tokens=1)
    pol = llm.engine.policy
    pol.choose = lambda rows, *_: pol._chose(1, rows, explored=False)  # as if k = 1 had been timed cheap
    llm.generate(_prompts((9, 9)), GREEDY)
    assert pol.stats.rows_cut_short >= 2 * 40  # every draft was cut
    # every step after the first (whose block caught up over the prompts) was steady, and timed as k = 1
    assert len(pol._samples[(2, 1)]) == min(15, GREEDY.max_tokens - 2), pol._samples.keys()
    assert (2, 0) not in pol._samples


def test_plain_steps_after_drafting_are_timed_once_settled():
    """The first plain steps after drafting run slow while the trunk's weights come back into the caches: the engine
    times a plain step only after PLAIN_SETTLE_STEPS plain ones, and a plain exploration lasts long enough to time
    one."""
    m = oracle_model(tiny_config(sliding_window=5, num_hidden_layers=4), seed=5)
    llm = LLM(m, num_speculative_tokens=2)
    pol = llm.engine.policy
    schedule = iter([2] * 5 + [0] * 8 + [2] * 3 + [0] * 100)
    chosen, timed = [], []
    pol.choose = lambda rows, *_: chosen.append(next(schedule)) or pol._chose(chosen[-1], rows, explored=False)
    observe = pol.observe_step
    pol.observe_step = lambda b, k, s: timed.append((len(chosen) - 1, k)) or observe(b, k, s)
    llm.generate(_prompts((9,)), SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    plain_timed = [i for i, k in timed if k == 0]
    first = 5 + PLAIN_SETTLE_STEPS  # the steps are numbered from 0: steps 5..12 are plain
    assert plain_timed[:13 - first] == list(range(first, 13)), timed
    assert plain_timed[13 - first] == 16 + PLAIN_SETTLE_STEPS, timed
    # the policy's plain explorations (where drafting wins) last PLAIN_SETTLE_STEPS untimed steps and a timed one
    p = SpeculationPolicy(2, prior_cost=lambda b, k: 1.0 + 0.2 * k, explore_every=4)
    chosen = "".join(map(str, _run(p, ["a"], 400, lambda k: k, lambda k: 1.0 + 0.2 * k)))
    runs = [len(r) for r in chosen[chosen.index("2"):].rstrip("0").replace("1", " ").replace("2", " ").split()]
    assert runs and set(runs) == {1 + PLAIN_SETTLE_STEPS}, chosen


def test_a_long_plain_spell_keeps_the_mtp_state_bounded():
    """Plain steps of a speculative engine keep each row's chain states and tokens only as far back as a block can
    reach, not for the whole request; drafting afterwards still gives plain greedy output."""
    from mimo.engine.speculative import reach

    m = oracle_model(tiny_config(sliding_window=5, num_hidden_layers=4), seed=5)
    prompt = _prompts((7,))[0]
    params = SamplingParams(temperature=0, max_tokens=260, ignore_eos=True)
    plain = LLM(m).generate([prompt], params)[0].outputs[0].token_ids
    llm = LLM(m, num_speculative_tokens=2)
    pol = llm.engine.policy
    steps = iter(range(10**6))
    pol.choose = lambda rows, *_: pol._chose(0 if next(steps) < 200 else 2, rows, explored=False)
    sizes = []
    execute = llm.engine.runner.execute

    def watch(plan):
        out = execute(plan)
        sizes.extend((st.chain[0].count, len(st.tokens)) for st in llm.engine.runner.mtp if st is not None)
        return out

    llm.engine.runner.execute = watch
    assert llm.generate([prompt], params)[0].outputs[0].token_ids == plain
    bound = 2 * (reach(1, 2, llm.engine.runner.cache.window) + 3) + 1
    assert max(c for c, _ in sizes) <= bound and max(t for _, t in sizes) <= bound + 3, (bound, max(sizes))


def test_a_rows_record_ages_once_per_decode_step_read_late_or_not():
    """Every decode step weighs each row's record by the decay (plain steps too, else a row whose first drafts
    failed would keep its verdict): applied when the record is read, it is the same as applied step by step."""
    from mimo.engine.policy import _DECAY

    p = SpeculationPolicy(2)
    p._cold = 2
    _warm(p, 1, {0: 1.0, 1: 10.0, 2: 20.0})  # drafting is far too dear: the steps below are plain
    p.choose(["a"])
    p.observe_row("a", 2, 0)  # one rejection at depth 1
    for _ in range(7):
        assert p.choose(["a"]) == 0
    rec = p.rows["a"].aged(p._steps)
    assert rec.tries == pytest.approx([_DECAY**7, 0.0]) and rec.accepts == [0.0, 0.0]
    p.observe_unmade("a", 4, 4)  # evidence is added to the record as aged to now, not aged itself
    assert p.rows["a"].tries[0] == pytest.approx(_DECAY**7 + 4) and p.rows["a"].accepts[0] == pytest.approx(4)


def test_an_exploration_too_dear_is_not_priced_again_at_every_step():
    """Pricing an exploration's catch-up reads every row's lag; while it is too dear the policy waits until it can
    afford it at that price instead of pricing it again at every step."""
    rows = [f"r{i}" for i in range(8)]
    p = SpeculationPolicy(1, window=128, explore_every=4)
    p._cold = 2
    _warm(p, 8, {0: 1.0, 1: 1.6})
    p._catchup.append((8, 1, 1.6 + 10.0, 1000))  # catching up 1000 positions: 10 plain steps
    priced = []
    p._catchup_by_k = lambda ids, f=p._catchup_by_k: priced.append(1) or f(ids)
    chosen = [p.choose(rows, positions=[300] * 8) for _ in range(200)]
    # 8 rows x 128 + 1 positions each, at 0.01 plain steps a position: ~10 plain steps, affordable after ~516
    assert chosen == [0] * 200
    assert len(priced) <= 3, len(priced)


def test_explorations_that_change_nothing_spend_a_shrinking_share_on_catch_up():
    """Batch 8, plain the best, every draft rejected, each exploration's first step catching 8 rows up over a window
    (~10 plain steps). At the full share (5%) that is one exploration per ~200 steps however often they changed
    nothing (3-4% of the time at batch 8 on mimo-nano); as the wait grows, the share shrinks with it."""
    rows = [f"r{i}" for i in range(8)]
    p = SpeculationPolicy(1, window=128, explore_every=4)
    p._cold = 2
    _warm(p, 8, {0: 1.0, 1: 1.6})
    explored = []
    for step in range(4000):
        k = p.choose(rows, positions=[300 + step] * 8)
        if k:
            explored.append(step)
            for r in rows:
                p.observe_row(r, 1, 0)
        catching_up = p._catchup_now()[k]  # (the step's, as observe_catchup reads it)
        p.observe_catchup(8, k, 1.6 + 0.01 * catching_up) if catching_up else p.observe_step(8, k, 1.6 if k else 1.0)
    gaps = [b - a for a, b in zip(explored, explored[1:]) if b - a > 1]
    assert gaps[-1] >= 600, gaps  # (at the full share: every 204 steps)
    assert len(explored) <= 20, explored  # (38)


def test_a_closed_batch_explores_only_what_could_pay_back_before_it_ends():
    """Plain wins (one draft, accepted a quarter of the time, costs 1.3 plain steps), the last exploration was long ago, and
    catching 8 rows up through block 1 costs ~10 plain steps. A closed batch whose rows end in 60 steps does not
    explore one draft (nothing it learnt could pay back in time); one whose rows have 5000 tokens to go does."""

    def explorations(remaining):
        rows = [f"r{i}" for i in range(8)]
        p = SpeculationPolicy(1, window=128, explore_every=4)
        p._cold = 2
        _warm(p, 8, {0: 1.0, 1: 1.3})
        for _ in range(40):  # 320 drafts verified, a quarter of them accepted: drafts that fail
            for j, r in enumerate(rows):
                p.observe_row(r, 1, int(j < 2))
        p._catchup.append((8, 1, 1.3 + 10.0, 1000))  # 1000 positions caught up: 10 plain steps
        p.since_explored = 1000
        explored = 0
        for step in range(60):
            k = p.choose(rows, positions=[300 + step] * 8, remaining=[remaining - step] * 8)
            explored += k
            p.observe_step(8, k, 1.3 if k else 1.0)
        return explored

    assert explorations(60) == 0
    assert explorations(5000) > 0


def test_a_spell_of_slow_steps_does_not_keep_a_losing_verify_chosen():
    """One draft, accepted half the time, gives 1.5 tokens for 1.6 plain steps' time: plain wins. For 20 steps
    another process slows every step by half; the plain steps timed then make a verify timed before look cheap,
    and the policy drafts. Once the machine is quiet again, the fresh times must win over the slow ones: the policy
    is back to plain after a few explorations, not drafting for as long as the plain step's slow times outnumber
    the fresh ones (each exploration adds one: before times went stale, it drafted to the end)."""
    p = SpeculationPolicy(1, explore_every=16)
    chosen, flip = [], [0]

    def accept():
        flip[0] ^= 1
        return flip[0]

    for step in range(600):
        k = p.choose(["a"])
        chosen.append(k)
        if k:
            p.observe_row("a", k, accept())
        slow = 1.5 if 100 <= step < 120 else 1.0
        p.observe_step(1, k, slow * (1.6 if k else 1.0))
    assert 1 in chosen[100:140]  # (the trap is set)
    assert chosen[300:].count(0) >= 0.9 * 300, chosen[300:].count(0)


def test_a_cost_timed_once_cannot_make_drafting_look_hopeless():
    """A verify timed once, slowly (an engine's first steps often are), must not shut drafting out until the
    longest wait between explorations: with one draft accepted 4 times in 5 and really costing 1.3 plain steps,
    the next exploration re-times it and the policy drafts."""
    p = SpeculationPolicy(1, explore_every=16)
    p._cold = 2
    _warm(p, 1, {0: 1.0})
    p.observe_step(1, 1, 3.0)  # timed once, at its worst
    for i in range(40):
        p.observe_row("old", 1, int(i % 5 != 0))  # acceptance 0.8, from enough drafts to judge
    rng = random.Random(0)
    chosen = _run(p, ["a"], 64, lambda k: k * int(rng.random() < 0.8), lambda k: 1.0 + 0.3 * k)
    assert chosen[:10] == [0] * 10
    assert chosen[40:].count(1) >= 20, chosen


def _runs_of(chosen, k):
    """Lengths of the maximal runs of k in ``chosen``."""
    out, n = [], 0
    for c in chosen + [None]:
        if c == k:
            n += 1
        elif n:
            out, n = out + [n], 0
    return out


def test_an_exploration_of_a_close_call_is_timed_over_several_steps():
    """One step's time is as noisy as a close call's gap: exploring one draft more where it is within 10% of the
    best takes its catch-up step and three timed ones; where it is far below, the catch-up step and one."""
    accept = lambda k: min(k, 1)  # noqa: E731  (depth 1 always accepted, deeper never)
    close = SpeculationPolicy(3, explore_every=8)
    chosen = _run(close, ["a"], 200, accept, lambda k: 1.0 + 0.1 * k)  # k=1: 2/1.1; k=2: 2/1.2, 8% below
    far = SpeculationPolicy(3, explore_every=8)
    chosen_far = _run(far, ["a"], 200, accept, lambda k: 1.0 + 0.1 * k if k < 2 else 3.0)  # k=2 63% below
    assert chosen[20:].count(1) > 150 and chosen_far[20:].count(1) > 150
    assert set(_runs_of(chosen[20:], 2)) == {4}, chosen
    assert set(_runs_of(chosen_far[20:], 2)) == {2}, chosen_far
    near = SpeculationPolicy(3, explore_every=8)
    chosen_near = _run(near, ["a"], 200, lambda k: k, lambda k: 1.0 + 0.6 * k if k < 3 else 4.0)
    # k=2: 3/2.2 best; k=1: 2/1.6, 8% below: explored downwards over three steps
    assert set(_runs_of(chosen_near[20:], 1)) == {3}, chosen_near


def test_explorations_thin_out_where_close_k_swap_on_noise():
    """mimo-nano's README prompt: one, two and three drafts within ~5% of each other, step times with +-7% noise,
    so the estimated best swaps between them. A swap to a k the old best is within 10% of is no discovery: the
    wait between explorations still doubles, and exploring stays under 2% of the steps (resetting the wait at
    every swap kept 3-5% of them exploring)."""
    cost = {0: 1.0, 1: 1.46, 2: 1.84, 3: 2.16}
    accept = [0.8, 0.7, 0.6]
    for seed in range(3):
        rng = random.Random(seed)

        def accepted(k, rng=rng):
            a = 0
            while a < k and rng.random() < accept[a]:
                a += 1
            return a

        p = SpeculationPolicy(3, explore_every=16)
        _run(p, ["a"], 500, accepted, lambda k, rng=rng: cost[k] * rng.uniform(0.93, 1.07))
        explored = p.stats.explored
        _run(p, ["a"], 2500, accepted, lambda k, rng=rng: cost[k] * rng.uniform(0.93, 1.07))
        assert (p.stats.explored - explored) / 2500 < 0.02, (seed, p.stats.as_dict())
        assert p.stats.steps_by_k[2] > 0.8 * 3000, (seed, p.stats.as_dict())  # the best (1.28 tokens a unit of time)
