"""No hidden global state: constructors leave process-wide settings and the model as the caller left them.

The one entry point that sets the process up is :func:`mimo.utils.runtime.configure` (called by ``LLM`` and
the ``mimo`` command); it reports what it changed, and :func:`mimo.utils.runtime.restore` puts it back.
"""

from __future__ import annotations

import pytest
import torch

from mimo.engine.engine import Engine
from mimo.engine.params import SamplingParams
from mimo.ops import kernels
from mimo.training.trainer import TrainConfig, train
from mimo.utils import runtime
from tests.helpers import random_model, tiny_config


def denormals_flushed() -> bool:
    """Whether subnormal floats are flushed (DAZ/FTZ): a subnormal input then multiplies as zero."""
    return float(torch.tensor([1e-39]) * torch.tensor([1.0])) == 0.0


@pytest.fixture
def clean_process():
    before = runtime.current()
    runtime.configure(flush_denormal=False, reuse_memory=False)
    yield
    runtime.restore(before)


def test_engine_and_trainer_leave_the_process_and_the_model_alone(clean_process, tmp_path):
    threads = torch.get_num_threads()
    model = random_model(tiny_config(), seed=1).train()
    eng = Engine(model, num_speculative_tokens=2, max_num_seqs=2)
    rid = eng.add_request([1, 2, 3], SamplingParams(temperature=0, max_tokens=5))
    while eng.has_unfinished():
        eng.step()
    assert len(eng.output(rid).outputs[0].token_ids) == 5
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert model.model.layers[0].self_attn.qkv is None  # not fused behind the caller's back
    assert not denormals_flushed() and torch.get_num_threads() == threads
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"m{i}.py").write_text("".join(f"def f{j}(x):\n    return x * {j}\n" for j in range(40)))
    train(TrainConfig(preset="tiny", out=str(tmp_path / "run"), seq_len=16, batch_size=2, steps=2, vocab_size=300,
                      data_root=str(corpus), heldout_percent=30, eval_interval=2, eval_batches=1, progress=False))
    assert not denormals_flushed() and torch.get_num_threads() == threads


def test_the_entry_point_sets_the_process_and_can_put_it_back(clean_process):
    before = runtime.configure(threads=1)
    assert denormals_flushed() and torch.get_num_threads() == 1
    assert before.flush_denormal is False
    runtime.restore(before)
    assert not denormals_flushed() and torch.get_num_threads() == before.threads
    with pytest.raises(ValueError, match="threads"):
        runtime.configure(threads=0)


def test_a_small_forward_never_builds_the_kernels(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(kernels, "_ok", None)  # as in a fresh process that has not loaded them
    monkeypatch.setattr(cpp_extension, "load", lambda *a, **kw: pytest.fail("a forward built the C++ kernels"))
    model = random_model(tiny_config(), seed=1)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    assert kernels._ok is None
