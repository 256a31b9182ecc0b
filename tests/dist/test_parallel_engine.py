"""The engine over 2 ranks (``LLM(..., tensor_parallel_size=2)`` starts the second itself): the same tokens as
one process, greedy and speculative (3 MTP drafts), and seeded sampling; the ranks check after every step that
they produced the same tokens (MIMO_CHECK_RANKS=1), unseeded sampling included."""

from __future__ import annotations

import pytest
import torch

from mimo import LLM, SamplingParams
from tests.helpers import oracle_model, tiny_config, tiny_model_dir

# different lengths, one longer than the sliding window (9); 3 prompts over 2 slots: a slot is reused
PROMPTS = [[3, 9, 1, 44], [(7 * i) % 300 for i in range(40)], [5] * 17]


@pytest.fixture(autouse=True)
def _check_ranks(monkeypatch):
    monkeypatch.setenv("MIMO_CHECK_RANKS", "1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def _tokens(llm, params):
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]


@pytest.mark.parametrize("k,ep,a2a", [(0, False, None), (3, True, None), (3, True, 8)])
def test_two_ranks_generate_what_one_process_does(model_dir, k, ep, a2a):
    """a2a: with expert parallelism, steps of at least that many tokens (prefill, verify at batch 2) dispatch
    by all-to-all, smaller ones all-reduce partial sums."""
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    seeded = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=20, ignore_eos=True, seed=11)
    # fixed: seeded draws depend on how many drafts each step made, and the adaptive policy decides that from
    # measured step times (greedy under the adaptive policy: test_accepted_drafts_under_tensor_and_expert_parallelism)
    one = LLM(model_dir, dtype="float32", num_speculative_tokens=k, max_num_seqs=2, speculative_policy="fixed")
    want_greedy, want_seeded = _tokens(one, greedy), _tokens(one, seeded)
    with LLM(model_dir, dtype="float32", num_speculative_tokens=k, max_num_seqs=2, tensor_parallel_size=2,
             enable_expert_parallel=ep, expert_all_to_all_from=a2a, speculative_policy="fixed") as two:
        assert _tokens(two, greedy) == want_greedy
        assert _tokens(two, seeded) == want_seeded
        unseeded = _tokens(two, SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True))  # ranks agree
        assert [len(t) for t in unseeded] == [8, 8, 8]


def test_accepted_drafts_under_tensor_and_expert_parallelism(tmp_path):
    """A model whose MTP blocks are often right: drafts are accepted, rejected and rolled back on both ranks."""
    from mimo.tokenizer import Tokenizer

    cfg = tiny_config(vocab_size=320)
    oracle_model(cfg, seed=4, draft_noise=(0.0, 0.3, 0.6)).save_pretrained(tmp_path)
    Tokenizer.from_pretrained(tiny_model_dir(tmp_path / "tok")).save_pretrained(tmp_path)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    want = _tokens(LLM(str(tmp_path), dtype="float32"), params)
    with LLM(str(tmp_path), dtype="float32", num_speculative_tokens=3, max_num_seqs=2, tensor_parallel_size=2,
             enable_expert_parallel=True) as two:
        outs = two.generate(PROMPTS, params)
    assert [o.outputs[0].token_ids for o in outs] == want
    accepted = sum(o.stats.accepted for o in outs)
    assert accepted > 0 and accepted < sum(o.stats.drafted for o in outs)


def test_a_loaded_model_is_refused(model_dir):
    from mimo.checkpoint import MiMoForCausalLM

    with pytest.raises(ValueError, match="directory"):
        LLM(MiMoForCausalLM.from_pretrained(model_dir), tensor_parallel_size=2)


def test_closing_gives_the_threads_back(model_dir):
    threads = torch.get_num_threads()
    with LLM(model_dir, tensor_parallel_size=2):
        pass
    assert torch.get_num_threads() == threads
