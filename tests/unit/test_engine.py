"""Engine invariants: speculative greedy == plain greedy, exact rejection sampling, bounded cache, bad input."""

import itertools
import math

import pytest
import torch

from mimo import LLM, SamplingParams
from mimo.engine.engine import Engine
from tests.helpers import oracle_model, random_model, tiny_config

GREEDY = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)


def _prompts(seed=0, lengths=(2, 11, 30)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module")
def model(device):
    return random_model(tiny_config(sliding_window=5, num_hidden_layers=6), seed=2).to(device)


@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
def test_speculative_greedy_equals_plain_greedy(model, policy):
    prompts = _prompts()
    plain = [o.outputs[0].token_ids for o in LLM(model).generate(prompts, GREEDY)]
    for k in (1, 2, 3):
        outs = LLM(model, num_speculative_tokens=k, speculative_policy=policy).generate(prompts, GREEDY)
        assert [o.outputs[0].token_ids for o in outs] == plain, k
        for o in outs:
            if policy == "fixed":
                assert o.stats.drafted == k * o.stats.decode_steps
                assert o.stats.drafts_per_step == {k: o.stats.decode_steps}
            else:
                assert o.stats.drafted <= k * o.stats.decode_steps
                assert sum(o.stats.drafts_per_step.values()) == o.stats.decode_steps
            assert 1.0 <= o.stats.acceptance_length <= k + 1


def test_speculative_greedy_with_penalties_equals_plain_greedy_with_them(model):
    """Greedy rows with penalties draft with distributions and verify through rejection sampling (the penalties
    apply at the verify): the output is still plain greedy's under the same penalties."""
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, repetition_penalty=1.3,
                            presence_penalty=0.5)
    prompts = _prompts()
    plain = [o.outputs[0].token_ids for o in LLM(model).generate(prompts, params)]
    for policy in ("fixed", "adaptive"):
        outs = LLM(model, num_speculative_tokens=3, speculative_policy=policy).generate(prompts, params)
        assert [o.outputs[0].token_ids for o in outs] == plain, policy


def _oracle_model():
    """Residual stream = token embedding only, so next token = f(current token), and every MTP block
    computes f of its input token exactly: all drafts are right."""
    return oracle_model(tiny_config(sliding_window=5, num_hidden_layers=6), seed=5)


def test_every_draft_accepted_in_constructed_case():
    m = _oracle_model()
    prompts = _prompts(1)
    plain = [o.outputs[0].token_ids for o in LLM(m).generate(prompts, GREEDY)]
    for k, policy in itertools.product((1, 2, 3), ("fixed", "adaptive")):
        outs = LLM(m, num_speculative_tokens=k, speculative_policy=policy).generate(prompts, GREEDY)
        assert [o.outputs[0].token_ids for o in outs] == plain
        for o in outs:
            if policy == "fixed":
                assert o.stats.accepted == o.stats.drafted  # nothing rejected
            else:  # nothing rejected; only max_tokens may cut the last step's accepted drafts short
                assert o.stats.drafted - k <= o.stats.accepted <= o.stats.drafted
            if policy == "fixed":  # (the adaptive policy's choices: tests/unit/test_policy.py, on a steady clock)
                assert o.stats.drafts_per_step == {k: o.stats.decode_steps}
                # 47 decode tokens in steps of k+1 (the last step may be cut by max_tokens)
                assert o.stats.decode_steps == math.ceil(47 / (k + 1))


def _provenance(engine, prompts, params):
    """Stream ``prompts`` through ``engine``; the provenance of each request's tokens, checked step by step."""
    rids = [engine.add_request(p, params) for p in prompts]
    prov = {rid: [] for rid in rids}
    while engine.has_unfinished():
        for d in engine.step():
            assert len(d.provenance) == len(d.token_ids)
            if d.finish_reason is None:  # a step emits the accepted drafts 1..a, then the main model's token
                assert d.provenance == list(range(1, len(d.provenance))) + [0]
            prov[d.request_id] += d.provenance
    return [(prov[rid], engine.output(rid).stats) for rid in rids]


@pytest.mark.parametrize("oracle", [False, True], ids=["random", "every-draft-accepted"])
def test_provenance_counts_the_accepted_drafts(model, oracle):
    m = _oracle_model() if oracle else model
    for k in (0, 3):  # fixed: a random model's drafts are mostly rejected, so the adaptive policy would stop
        runs = _provenance(Engine(m, num_speculative_tokens=k, speculative_policy="fixed"), _prompts(), GREEDY)
        for prov, stats in runs:
            assert len(prov) == 48 and prov[0] == 0  # the first token comes from prefill
            assert sum(p > 0 for p in prov) == stats.accepted
            if k == 0:
                assert set(prov) == {0}
            # Main-model decode forwards from the provenance alone (what the chat page computes): one per trunk
            # token after prefill's, plus a last step whose trunk token a stop cut off.
            forwards = prov.count(0) - 1 + (prov[-1] > 0)
            assert forwards == stats.decode_steps
            assert (len(prov) - 1) / forwards == pytest.approx(stats.acceptance_length)
        if k == 3 and oracle:
            assert prov == [0] + [1, 2, 3, 0] * 11 + [1, 2, 3]  # max_tokens cuts the last step's trunk token
        elif k == 3:  # a random model: some drafts accepted, most not
            assert 0 < sum(stats.accepted for _, stats in runs) < sum(stats.drafted for _, stats in runs)


@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
def test_rejection_sampling_preserves_the_target_distribution(policy):
    """Exact marginal of the 2nd generated token vs 2000 speculative samples (chi-square, fixed seed)."""
    cfg = tiny_config(vocab_size=12, sliding_window=5)
    m = random_model(cfg, seed=9)
    with torch.no_grad():
        m.lm_head.weight.mul_(40)  # a peaked but not degenerate distribution
    prompt = [1, 2, 3]
    with torch.no_grad():
        p1 = torch.softmax(m(torch.tensor([prompt])).logits[0, -1], -1)
        ctx = torch.tensor([prompt + [t] for t in range(12)])
        p2_given = torch.softmax(m(ctx).logits[:, -1], -1)  # [t1, t2]
    p2 = (p1[:, None] * p2_given).sum(0)
    n = 2000
    llm = LLM(m, num_speculative_tokens=3, max_num_seqs=n, speculative_policy=policy)
    out = llm.generate(prompt, SamplingParams(n=n, temperature=1.0, max_tokens=2, seed=1234, ignore_eos=True))[0]
    assert out.stats.drafted > 0
    second = torch.tensor([c.token_ids[1] for c in out.outputs])
    counts = torch.bincount(second, minlength=12).double()
    expected = p2.double() * n
    keep = expected >= 5
    chi2 = (((counts - expected) ** 2) / expected)[keep].sum().item()
    dof = int(keep.sum()) - 1
    # 0.999 quantile of chi-square: mean + 3.1 sd is a safe bound for dof <= 11
    assert chi2 < dof + 3.1 * math.sqrt(2 * dof) + 3, (chi2, dof)


def test_seeded_sampling_is_reproducible_and_batch_independent(model):
    sp = SamplingParams(temperature=0.9, top_p=0.9, max_tokens=20, seed=7, ignore_eos=True)
    alone = LLM(model).generate(_prompts()[1], sp)[0].outputs[0].token_ids
    batch = LLM(model).generate(_prompts(), [GREEDY, sp, GREEDY])[1].outputs[0].token_ids
    assert alone == batch


def test_requests_join_between_steps(model):
    prompts = _prompts()
    want = [o.outputs[0].token_ids for o in LLM(model).generate(prompts, GREEDY)]
    eng = Engine(model, max_num_seqs=2)
    ids = [eng.add_request(prompts[0], GREEDY)]
    for _ in range(5):
        eng.step()
    ids += [eng.add_request(p, GREEDY) for p in prompts[1:]]  # one must wait for a free slot
    while eng.has_unfinished():
        eng.step()
    assert [eng.output(i).outputs[0].token_ids for i in ids] == want
    assert eng.cache_bytes_in_use() == 0


def test_stop_token_ids_and_logprobs(model):
    base = LLM(model).generate([5, 6, 7], GREEDY)[0].outputs[0].token_ids
    stop_at = base[10]
    o = LLM(model).generate([5, 6, 7], SamplingParams(temperature=0, max_tokens=48, stop_token_ids=[stop_at],
                                                      logprobs=3))[0].outputs[0]
    first = base.index(stop_at)
    assert o.token_ids == base[: first + 1] and o.finish_reason == "stop" and o.stop_reason == stop_at
    assert len(o.logprobs) == len(o.token_ids)
    assert all(lp.top[0][0] == lp.token_id for lp in o.logprobs)  # greedy: chosen = most likely
    assert all(len(lp.top) == 3 and lp.logprob <= 0 for lp in o.logprobs)


def test_abort_frees_the_slot(model):
    eng = Engine(model, max_num_seqs=2, num_speculative_tokens=2)
    # unseeded sampling from a random model could draw EOS within two steps: make the run certain
    rid = eng.add_request([1, 2, 3], SamplingParams(max_tokens=100, ignore_eos=True, seed=0))
    eng.step()
    eng.step()
    assert eng.num_running == 1
    assert eng.abort(rid)
    assert eng.num_running == 0 and eng.cache_bytes_in_use() == 0
    assert eng.output(rid).outputs[0].finish_reason == "abort"


@pytest.mark.parametrize(
    "prompt, params, message",
    [
        ([], {}, "prompt is empty"),
        ([1] * 5000, {}, "max_model_len"),
        ([1, 2, 999], {}, "outside the vocabulary"),
        ([1, -1], {}, "outside the vocabulary"),
        ([1, 2], {"max_tokens": 0}, "max_tokens"),
        ([1, 2], {"top_p": 0.0}, "top_p"),
        ([1, 2], {"top_p": 1.5}, "top_p"),
        ([1, 2], {"temperature": -1.0}, "temperature"),
        ([1, 2], {"stop": [""]}, "stop strings"),
        ([1, 2], {"top_k": -5}, "top_k"),
        ("text", {}, "needs a tokenizer"),
    ],
)
def test_bad_input_is_rejected_and_others_keep_running(model, prompt, params, message):
    eng = Engine(model, max_num_seqs=4, max_model_len=4096)
    good = eng.add_request([3, 4], SamplingParams(temperature=0, max_tokens=8))
    eng.step()
    with pytest.raises(ValueError, match=message):
        eng.add_request(prompt, SamplingParams(**params))
    while eng.has_unfinished():
        eng.step()
    out = eng.output(good).outputs[0]
    assert len(out.token_ids) == 8 and out.finish_reason == "length"


def test_speculation_without_mtp_blocks_is_a_clear_error():
    m = random_model(tiny_config(num_nextn_predict_layers=0))
    with pytest.raises(ValueError, match="needs 1 MTP block.*has 0"):
        Engine(m, num_speculative_tokens=1)
    with pytest.raises(ValueError, match="needs 3 MTP"):
        Engine(random_model(tiny_config(num_nextn_predict_layers=2)), num_speculative_tokens=3)


def test_cache_size_at_32k_context_is_the_theoretical_size():
    """Drive the cache through 32K positions in prefill-sized chunks (no attention maths: this is about bytes)."""
    from mimo.engine.kv_cache import HybridKVCache

    cfg = tiny_config(max_position_embeddings=40000)
    lookahead = 4
    cache = HybridKVCache(cfg, max_seqs=1, max_len=40000, lookahead=lookahead).bind([0])
    per_tok = {kind: cfg.kv_values_per_token(kind) * 4 for kind in ("full_attention", "sliding_attention")}
    n_full = cfg.layer_types.count("full_attention")
    n_ring = cfg.num_hidden_layers - n_full + cfg.num_mtp_layers
    ring_bytes = []
    pos = 0
    for context in (8192, 32768):
        while pos < context:
            p = torch.arange(pos, pos + 2048)[None]
            for layer, kind in list(enumerate(cfg.layer_types)) + [(("mtp", i), "sliding_attention") for i in range(3)]:
                h, dk, dv = cfg.num_kv_heads(kind), cfg.qk_head_dim(kind), cfg.v_dim(kind)
                cache.ensure_capacity(pos + 2048)
                cache.update(layer, torch.randn(1, h, 2048, dk), torch.randn(1, h, 2048, dv), p)
            pos += 2048
        theory = n_full * per_tok["full_attention"] * context + n_ring * per_tok["sliding_attention"] * (
            cfg.sliding_window + lookahead)
        assert abs(cache.allocated_bytes() - theory) / theory < 0.10, (context, cache.allocated_bytes(), theory)
        assert abs(cache.sequence_bytes(context) - theory) / theory < 0.10
        ring_bytes.append(sum(r.nbytes() for r in cache.rings.values()))
        # the ring holds exactly the newest window + lookahead positions
        assert sorted(cache.rings[1].pos[0].tolist()) == list(range(context - cache.ring_size, context))
    assert ring_bytes[0] == ring_bytes[1]  # sliding layers and MTP blocks stay flat as the context grows


def test_engine_reports_cache_bytes_per_request(model):
    out = LLM(model, num_speculative_tokens=2).generate(_prompts()[2], GREEDY)[0]
    eng_cache = LLM(model, num_speculative_tokens=2).engine.cache
    cached = len(out.prompt_token_ids) + len(out.outputs[0].token_ids) - 1  # the last token is never fed back
    assert out.cache_bytes == eng_cache.sequence_bytes(cached)


def test_idle_mtp_blocks_catch_up_only_what_can_still_be_read(model, monkeypatch):
    """The adaptive policy can leave MTP blocks idle for hundreds of steps. When they run again they catch up
    only over the positions a query can still attend to (their window, and the windows of the blocks that
    read them): output stays plain greedy, and the chain states and tokens kept stay bounded."""
    from mimo.engine.policy import SpeculationPolicy

    g = torch.Generator().manual_seed(3)
    # long stretches without drafts, then bursts of every depth, in a batch of mixed lengths
    pattern = [0] * 40 + [3, 3, 1, 0, 0, 2] + [0] * 25 + [1] * 5 + [3] * 4 + [0] * 60 + [2, 3]
    pattern += torch.randint(0, 4, (200,), generator=g).tolist()
    steps = iter(pattern * 4)
    params = SamplingParams(temperature=0, max_tokens=300, ignore_eos=True)
    prompts = _prompts(lengths=(3, 17))
    plain = [o.outputs[0].token_ids for o in LLM(model).generate(prompts, params)]
    monkeypatch.setattr(SpeculationPolicy, "choose", lambda self, rows, *_: next(steps))
    llm = LLM(model, num_speculative_tokens=3)
    largest = {"chain": 0, "tokens": 0}
    runner = llm.engine.runner
    real = runner._speculative

    def watch(plan, rows):
        out = real(plan, rows)
        for st in (runner.mtp[r.slot] for r in rows):
            largest["chain"] = max([largest["chain"]] + [0 if c.rows is None else c.rows.shape[0] for c in st.chain])
            largest["tokens"] = max(largest["tokens"], len(st.tokens))
        return out

    monkeypatch.setattr(runner, "_speculative", watch)
    outs = llm.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in outs] == plain
    window = llm.engine.runner.cache.window
    # at most the deepest reach (3 windows) plus the steps of the longest idle stretch since the last draft
    assert largest["chain"] <= 3 * window + 4 + 70, largest
    assert largest["tokens"] <= 3 * window + 8 + 70, largest


def test_warmup_leaves_no_trace(model):
    """Engine.warmup runs a short request (every block of a speculative engine drafts) and forgets it: the next
    request's output, and the policy's state, are those of a fresh engine."""
    from mimo.engine.engine import Engine

    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    fresh = Engine(model, num_speculative_tokens=3)
    rid = fresh.add_request([1, 2, 3], params)
    while fresh.has_unfinished():
        fresh.step()
    warmed = Engine(model, num_speculative_tokens=3)
    warmed.warmup()
    assert not warmed.has_unfinished() and warmed.policy.times == {} and warmed.speculation_stats()["steps_by_k"] == {}
    rid2 = warmed.add_request([1, 2, 3], params)
    while warmed.has_unfinished():
        warmed.step()
    assert warmed.output(rid2).outputs[0].token_ids == fresh.output(rid).outputs[0].token_ids
    assert warmed.policy.policy == "adaptive" and warmed.scheduler.policy is warmed.policy
