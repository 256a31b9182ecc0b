"""Training: losses and their target alignment, expert balancing, optimizer, exact resume, crash-safe checkpoints, CLI."""

import dataclasses
import json
import math
import os

import pytest
import torch

from mimo.checkpoint import MiMoForCausalLM
from mimo.training import checkpointing
from mimo.training.balance import load_imbalance, moe_layers, update_expert_bias
from mimo.training.loss import LossConfig, balance_loss, compute_losses, targets
from mimo.training.optim import WarmupCosine, build_optimizer, param_groups
from mimo.training.trainer import TrainConfig, read_metrics, train
from tests.helpers import random_model, tiny_config

LOSS_KEYS = ("loss", "main_loss", "acc", "mtp_loss_1", "mtp_acc_1", "mtp_loss_2", "mtp_acc_2", "mtp_loss_3",
             "mtp_acc_3", "balance_loss", "grad_norm", "imbalance")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a busy 2-core machine OpenMP's spinning costs 10x."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Ten small, repetitive Python files: enough for a 300-token BPE and a few batches."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(10):
        body = "".join(f"def f{j}(x, y={(i * 7 + j) % 10}):\n    return x + y * {j}\n\n" for j in range(30))
        (root / f"mod{i}.py").write_text(f'"""Module {i}."""\n\n' + body)
    return str(root)


def _cfg(out, corpus, **kw) -> TrainConfig:
    base = dict(preset="tiny", out=str(out), seq_len=16, batch_size=2, steps=4, lr=1e-2, warmup_steps=1,
                vocab_size=300, data_root=corpus, heldout_percent=30, eval_interval=2, eval_batches=2,
                checkpoint_interval=2, progress=False)
    return TrainConfig(**{**base, **kw})


def _train_rows(out):
    return [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["kind"] == "train"]


# ---------------------------------------------------------------------- losses
def test_one_optimizer_step_reduces_the_loss():
    model = random_model(tiny_config(), seed=3, nontrivial=False).train()
    batch = torch.randint(0, 128, (2, 24 + 4), generator=torch.Generator().manual_seed(0))
    cfg = LossConfig()
    opt = build_optimizer(model, lr=3e-3)
    before = compute_losses(model, batch, cfg)
    before["loss"].backward()
    opt.step()
    with torch.no_grad():
        after = compute_losses(model, batch, cfg)
    assert float(after["loss"]) < float(before["loss"].detach())
    assert after["main_loss"] < before["main_loss"]
    assert all(after[f"mtp_loss_{k}"] < before[f"mtp_loss_{k}"] for k in (1, 2, 3))


def test_total_is_main_plus_weighted_mtp_plus_aux():
    model = random_model(tiny_config(), seed=4)
    batch = torch.randint(0, 128, (2, 20 + 4), generator=torch.Generator().manual_seed(1))
    cfg = LossConfig(mtp_weights=(0.5, 0.25, 0.125), aux_coef=0.01)
    with torch.no_grad():
        out = compute_losses(model, batch, cfg)
    n_moe = len(moe_layers(model))
    want = out["main_loss"] + sum(w * out[f"mtp_loss_{k + 1}"] for k, w in enumerate(cfg.mtp_weights))
    want += 0.01 * out["balance_loss"] * n_moe  # the metric is per layer, the loss sums the layers
    assert math.isclose(float(out["loss"]), want, rel_tol=1e-5)
    assert out["expert_counts"].shape == (n_moe, 8)
    assert int(out["expert_counts"].sum()) == n_moe * 2 * 20 * 2  # every token routed to top-2 in every layer


def test_mtp_targets_are_token_i_plus_k_plus_1():
    """An oracle model that predicts "the token after the one I was fed" is perfect only if depth k at
    row i is fed t[i+k] and scored against t[i+k+1] (main head: fed t[i], scored against t[i+1])."""
    vocab, seq_len = 128, 10
    model = random_model(tiny_config(), seed=0)
    batch = torch.stack([torch.arange(seq_len + 4) * 2, torch.arange(seq_len + 4) * 2 + 1])  # every id distinct
    fed = {}

    def trunk(ids, positions=None, cache=None, router_out=None):
        fed[0] = ids
        return (ids + 0).float()[..., None]  # "hidden" = the id itself; the head predicts its successor

    def mtp_block(depth, token_ids, chain, positions, cache=None):
        fed[depth] = (token_ids, chain)
        return token_ids.float()[..., None]

    succ = {int(batch[b, j]): int(batch[b, j + 1]) for b in range(2) for j in range(seq_len + 3)}

    def compute_logits(hidden):
        nxt = torch.tensor([succ.get(int(v), 0) for v in hidden.flatten()]).view(hidden.shape[:-1])
        return torch.nn.functional.one_hot(nxt, vocab).float() * 50

    model.trunk, model.mtp_block, model.compute_logits = trunk, mtp_block, compute_logits
    out = compute_losses(model, batch, LossConfig())
    assert out["acc"] == 1.0 and out["main_loss"] < 1e-6
    for k in (1, 2, 3):
        assert out[f"mtp_acc_{k}"] == 1.0 and out[f"mtp_loss_{k}"] < 1e-6
        token_ids, chain = fed[k]
        assert torch.equal(token_ids, batch[:, k : k + seq_len])  # t[i+k] for rows i = 0..T-1
        assert torch.equal(targets(batch, seq_len, k), batch[:, k + 1 : k + 1 + seq_len])
        prev = fed[k - 1][0] if k > 1 else fed[0]  # block k reads block k-1's output (the trunk's for k = 1)
        assert torch.equal(chain[..., 0].long(), prev[:, :seq_len])
    assert torch.equal(fed[0], batch[:, :seq_len])


def test_balance_loss_is_one_when_uniform_and_larger_when_skewed():
    t, e = 8, 4
    uniform = balance_loss(torch.full((t, e), 0.5), torch.tensor([[0, 1], [2, 3]] * 4), batch=1)
    assert math.isclose(float(uniform), 1.0, rel_tol=1e-6)
    scores = torch.tensor([[0.9, 0.9, 0.1, 0.1]] * t)
    skewed = balance_loss(scores, torch.tensor([[0, 1]] * t), batch=1)
    assert float(skewed) > 1.5


# ---------------------------------------------------------------------- balancing and optimizer
def test_expert_bias_update_moves_a_skewed_router_toward_balance():
    model = random_model(tiny_config(), seed=5, nontrivial=False)
    with torch.no_grad():
        for moe in moe_layers(model):
            moe.gate.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
            moe.gate.e_score_correction_bias.copy_(torch.tensor([1.0, 1.0, 0, 0, 0, 0, 0, 0]))  # experts 0, 1 hog
    batch = torch.randint(0, 128, (4, 32 + 4), generator=torch.Generator().manual_seed(2))
    cfg = LossConfig(aux_coef=0.0)
    history = []
    with torch.no_grad():
        for _ in range(60):
            counts = compute_losses(model, batch, cfg)["expert_counts"]
            history.append(float(load_imbalance(counts).mean()))
            update_expert_bias(model, counts, rate=0.02)
    assert history[0] == 4.0  # every token on experts 0 and 1: max load / mean load = E / K
    assert sum(history[-10:]) / 10 < 1.3
    for moe in moe_layers(model):
        b = moe.gate.e_score_correction_bias
        assert b[:2].max() < 1.0 and b[2:].min() > 0.0  # hogs pushed down, idle experts pulled up


def test_weight_decay_groups_and_schedule():
    model = random_model(tiny_config())
    decay, no_decay = param_groups(model, 0.1)
    assert "lm_head.weight" in decay["names"] and "model.layers.1.mlp.gate.weight" in decay["names"]
    assert "model.layers.1.mlp.experts.gate_proj" in decay["names"]
    assert "model.embed_tokens.weight" in no_decay["names"]
    assert all(n.endswith(("norm.weight", "attention_sink_bias", "embed_tokens.weight")) for n in no_decay["names"])
    s = WarmupCosine(lr=1.0, warmup=10, total=110, min_lr_ratio=0.1)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.55) and s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)


def test_nano_preset_has_the_released_shape_and_ships_under_60_mb():
    from mimo.config import FULL, SLIDING, preset
    from mimo.model.sizes import parameter_counts

    cfg = preset("nano")
    assert cfg.layer_types[0] == cfg.layer_types[5] == FULL
    assert all(cfg.layer_types[i] == SLIDING for i in (1, 2, 3, 4, 6, 7))
    assert cfg.sliding_window == 129 and cfg.has_sinks(SLIDING) and not cfg.is_moe(0) and cfg.is_moe(1)
    assert (cfg.num_mtp_layers, cfg.vocab_size, cfg.eos_token_id) == (3, 4096, 0)
    assert parameter_counts(cfg).total_with_mtp * 2 < 60e6  # bf16 bytes


# ---------------------------------------------------------------------- runs, checkpoints, CLI
def test_resumed_run_reproduces_the_uninterrupted_run_bitwise(tmp_path, corpus):
    full = tmp_path / "full"
    train(_cfg(full, corpus), model_config=tiny_config())
    part = tmp_path / "part"
    train(_cfg(part, corpus), model_config=tiny_config(), should_stop=lambda step: step == 2)
    assert [r["step"] for r in _train_rows(part)] == [1, 2]
    summary = train(_cfg(part, corpus, resume=True))
    assert summary["step"] == 4
    a, b = _train_rows(full), _train_rows(part)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert {k: ra[k] for k in LOSS_KEYS} == {k: rb[k] for k in LOSS_KEYS}  # exact float equality
    wa = MiMoForCausalLM.from_pretrained(full / "checkpoints" / "step-00000004" / "model").state_dict()
    wb = MiMoForCausalLM.from_pretrained(part / "checkpoints" / "step-00000004" / "model").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_run_continued_from_its_exported_model_goes_on_with_its_schedule_and_data(tmp_path, corpus, capsys):
    """``continue_from`` a run's final/ (bf16 weights + training_state.json, no optimizer state): the step, the
    schedule and every batch continue as in the uninterrupted run; only AdamW's moments restart (with the lr
    re-warmed), so the losses are close to, not bitwise, the uninterrupted run's. The CLI takes the run's settings
    from the exported state."""
    from mimo.cli.main import main

    full = tmp_path / "full"
    train(_cfg(full, corpus, steps=6, checkpoint_interval=3), model_config=tiny_config())
    part = tmp_path / "part"
    train(_cfg(part, corpus, steps=6, checkpoint_interval=3), model_config=tiny_config(),
          should_stop=lambda step: step == 3)
    state = json.loads((part / "final" / "training_state.json").read_text())
    assert state["step"] == 3 and state["total_steps"] == 6
    with pytest.raises(ValueError, match="seq_len"):
        train(_cfg(tmp_path / "bad", corpus, steps=6, seq_len=8, continue_from=str(part / "final")))
    with pytest.raises(ValueError, match="training_state.json"):
        train(_cfg(tmp_path / "bad2", corpus, steps=6, continue_from=str(full / "checkpoints" / "step-00000006" / "model")))
    rc = main(["train", "--out", str(tmp_path / "cont"), "--continue-from", str(part / "final"), "--rewarm-steps", "2",
               "--no-progress"])
    assert rc == 0 and "stopped at step 6/6" in capsys.readouterr().out
    a, b = _train_rows(full), _train_rows(tmp_path / "cont")
    assert [r["step"] for r in b] == [4, 5, 6]
    assert [r["lr"] for r in b] == pytest.approx([a[3]["lr"] / 2, a[4]["lr"], a[5]["lr"]])  # re-warmed over 2 steps
    assert b[0]["main_loss"] == pytest.approx(a[3]["main_loss"], rel=0.02)  # the same batch, bf16-rounded weights
    assert b[0]["tokens"] == a[3]["tokens"]
    # resuming a continued run keeps its re-warm: the run stopped after its first step ends like the one above
    cfg = _cfg(tmp_path / "cont2", corpus, steps=6, checkpoint_interval=1, continue_from=str(part / "final"),
               rewarm_steps=2)
    train(cfg, should_stop=lambda step: step == 4)
    train(dataclasses.replace(cfg, resume=True))
    c = _train_rows(tmp_path / "cont2")
    assert [r["lr"] for r in c] == [r["lr"] for r in b]
    assert [r["main_loss"] for r in c] == [r["main_loss"] for r in b]


def test_a_warm_start_takes_a_models_weights_and_tokenizer_with_a_new_schedule_and_data(tmp_path, corpus, capsys):
    """``init_from`` a model directory: its weights (bf16 export, widened) and tokenizer start a new run whose schedule
    begins at step 0, on this run's data; ``--continue-from`` and ``--init-from`` together are refused."""
    from mimo.cli.main import main

    first = tmp_path / "first"
    train(_cfg(first, corpus, steps=4), model_config=tiny_config())
    other = tmp_path / "other-corpus"
    other.mkdir()
    for i in range(6):
        (other / f"m{i}.py").write_text("".join(f"value_{j} = {i} * {j}\n" for j in range(60)))
    rc = main(["train", "--out", str(tmp_path / "warm"), "--init-from", str(first / "final"), "--data-root", str(other),
               "--steps", "2", "--seq-len", "16", "--batch-size", "2", "--lr", "1e-30", "--warmup", "1",
               "--heldout-percent", "30", "--eval-interval", "2", "--checkpoint-interval", "2", "--no-progress"])
    assert rc == 0 and "stopped at step 2/2" in capsys.readouterr().out
    rows = _train_rows(tmp_path / "warm")
    assert [r["step"] for r in rows] == [1, 2]
    state = json.loads((tmp_path / "warm" / "final" / "training_state.json").read_text())
    assert state["step"] == 2 and state["total_steps"] == 2 and state["train_config"]["init_from"] == str(first / "final")
    assert (tmp_path / "warm" / "tokenizer" / "tokenizer.json").read_text() == \
        (first / "final" / "tokenizer.json").read_text()
    a = MiMoForCausalLM.from_pretrained(str(first / "final")).state_dict()
    b = MiMoForCausalLM.from_pretrained(str(tmp_path / "warm" / "final")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if "e_score_correction_bias" not in k)  # (lr ~0: nothing moved
    # but the expert-selection biases, which follow the load, not the gradient)
    # a warm-started run goes on across machines like any other (its schedule and data, the init model not needed)
    os.rename(first / "final", first / "moved")
    rc = main(["train", "--out", str(tmp_path / "warm2"), "--continue-from", str(tmp_path / "warm" / "final"),
               "--steps", "3", "--no-progress"])
    assert rc == 0 and "stopped at step 3/3" in capsys.readouterr().out
    os.rename(first / "moved", first / "final")
    rc = main(["train", "--out", str(tmp_path / "both"), "--init-from", str(first / "final"), "--continue-from",
               str(first / "final"), "--no-progress"])
    assert rc != 0 and "exclude each other" in capsys.readouterr().err


def test_a_run_killed_while_saving_keeps_the_previous_checkpoint(tmp_path, corpus, monkeypatch):
    real = checkpointing.save_optimizer
    calls = []

    def crash_on_second_save(opt, directory):
        calls.append(directory)
        if len(calls) == 2:  # the model of step 4 is already written: die half-way through the checkpoint
            raise KeyboardInterrupt("killed")
        real(opt, directory)

    monkeypatch.setattr(checkpointing, "save_optimizer", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, corpus), model_config=tiny_config())
    monkeypatch.setattr(checkpointing, "save_optimizer", real)
    # what a SIGKILL would leave behind: a partial temporary directory
    junk = tmp_path / "checkpoints" / ".tmp-killed"
    (junk / "model").mkdir(parents=True)
    (junk / "model" / "model.safetensors").write_bytes(b"\0" * 10)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # a metrics line cut off by the kill
    latest = checkpointing.latest_checkpoint(str(tmp_path))
    assert os.path.basename(latest) == "step-00000002"
    MiMoForCausalLM.from_pretrained(os.path.join(latest, "model"))
    assert train(_cfg(tmp_path, corpus, resume=True))["step"] == 4
    assert [r["step"] for r in _train_rows(tmp_path)] == [1, 2, 3, 4]


def test_cli_train_writes_metrics_plot_and_a_loadable_model(tmp_path, corpus, capsys):
    from mimo.cli.main import main
    from mimo.tokenizer import Tokenizer

    out = tmp_path / "run"
    rc = main(["train", "--preset", "tiny", "--vocab-size", "300", "--data-root", corpus, "--heldout-percent", "30",
               "--steps", "2", "--seq-len", "16", "--batch-size", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert "stopped at step 2/2" in capsys.readouterr().out
    rows = read_metrics(str(out / "metrics.jsonl"))
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]
    assert any(r["kind"] == "eval" for r in rows)
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    final = out / "final"
    model = MiMoForCausalLM.from_pretrained(final)
    tok = Tokenizer.from_pretrained(final)
    assert json.loads((final / "generation_config.json").read_text())["eos_token_id"] == tok.eos_token_id
    ids = torch.tensor([tok.encode("def f(x):\n    return")])
    assert torch.isfinite(model(ids).logits).all()
    assert model.config.eos_token_id == tok.eos_token_id == 0


def test_a_checkpoint_older_than_a_setting_resumes_with_its_default(tmp_path):
    """A run saved before a data setting existed (split_digits) resumes when the setting is at its default, and
    refuses when asked for another value: the data stream would differ."""
    from dataclasses import asdict

    from mimo.training.trainer import TrainConfig, _check_resume

    cfg = TrainConfig(out=str(tmp_path), steps=10)
    saved = json.loads(json.dumps(asdict(cfg)))
    del saved["split_digits"]
    _check_resume(cfg, saved)
    with pytest.raises(ValueError, match="split_digits"):
        _check_resume(TrainConfig(out=str(tmp_path), steps=10, split_digits=True), saved)


def test_synthetic_files_join_the_corpus_once(tmp_path):
    """``--synthetic-files N`` writes N copy-only files into the run directory once (a resume reuses them) and
    lists them beside the corpus's files."""
    from mimo.training.trainer import TrainConfig, _synthetic_files

    cfg = TrainConfig(out=str(tmp_path), steps=10, synthetic_files=3)
    got = _synthetic_files(cfg)
    assert [r for r, _ in got] == [f"synthetic/synth_{i:05d}.py" for i in range(3)]
    first = os.path.getmtime(got[0][1])
    assert _synthetic_files(cfg) == got and os.path.getmtime(got[0][1]) == first
    assert _synthetic_files(TrainConfig(out=str(tmp_path), steps=10)) == []
