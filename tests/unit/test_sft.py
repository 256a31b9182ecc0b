"""mimo sft: trains on the assistant's tokens, resumes exactly, ships a model the engine loads."""

import json

import pytest
import torch

from mimo.checkpoint import MiMoForCausalLM
from mimo.posttrain.domains import write_domains
from mimo.posttrain.sft import SFTConfig, train_sft
from mimo.tokenizer import Tokenizer
from tests.helpers import tiny_model_dir


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    model = tiny_model_dir(root / "base")
    tok = Tokenizer.from_pretrained(model)
    assert tok.chat_template  # the tiny tokenizer carries mimo's template
    data = root / "data"
    write_domains(data, seed=0, counts={"train": 6, "heldout": 2})
    return model, str(data), root


def _cfg(setup, out, **kw):
    model, data, root = setup
    return SFTConfig(**{"data": data, "init": model, "out": str(root / out), "steps": 6, "batch_size": 3,
                        "max_len": 1024, "checkpoint_interval": 2, "progress": False, **kw})


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(setup):
    straight = train_sft(_cfg(setup, "straight"))
    assert straight["step"] == 6 and straight["rows"] + straight["dropped"] == 18 and straight["rows"] >= 9
    cfg = _cfg(setup, "resumed")
    first = train_sft(cfg, should_stop=lambda step: step == 3)
    assert first["step"] == 3
    with pytest.raises(ValueError, match="checkpoints"):
        train_sft(cfg)  # an existing run is not overwritten
    second = train_sft(SFTConfig(**{**cfg.__dict__, "resume": True}))
    assert second["step"] == 6
    a = MiMoForCausalLM.from_pretrained(f"{setup[2]}/straight/checkpoints/step-00000006/model")
    b = MiMoForCausalLM.from_pretrained(f"{setup[2]}/resumed/checkpoints/step-00000006/model")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="settings"):
        train_sft(SFTConfig(**{**cfg.__dict__, "resume": True, "lr": 1e-3}))


def test_bf16_autocast_trains_and_an_older_run_resumes(setup):
    fp32 = train_sft(_cfg(setup, "f32", steps=2))
    bf16 = train_sft(_cfg(setup, "b16", steps=2, dtype="bf16"))
    a, b = fp32["last"]["main_loss"], bf16["last"]["main_loss"]
    assert b == pytest.approx(a, rel=0.05) and b != a  # the same run at bf16's precision, not a copy of it
    with pytest.raises(ValueError, match="dtype"):
        _cfg(setup, "bad", dtype="fp16")
    # a run written before --dtype existed resumes: its settings lack the field, which then means fp32
    cfg = _cfg(setup, "old", steps=4)
    train_sft(cfg, should_stop=lambda step: step == 2)
    ckpt = f"{setup[2]}/old/checkpoints/step-00000002/state.json"
    state = json.load(open(ckpt))
    del state["sft_config"]["dtype"]
    json.dump(state, open(ckpt, "w"))
    assert train_sft(SFTConfig(**{**cfg.__dict__, "resume": True}))["step"] == 4


def test_metrics_and_the_shipped_model(setup):
    res = train_sft(_cfg(setup, "ship", lr=1e-3))
    rows = [json.loads(line) for line in open(f"{setup[2]}/ship/metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(r["trained_tokens"] > 0 and r["main_loss"] > 0 for r in rows)
    assert {"mtp_loss_1", "mtp_loss_2", "mtp_loss_3"} <= set(rows[0])
    from mimo import LLM, SamplingParams

    llm = LLM(res["final"], num_speculative_tokens=3)  # the chat template and tokenizer travel with it
    prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=5))[0]
    assert len(out.outputs[0].token_ids) >= 1


def test_bad_data_is_named(setup, tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    with pytest.raises(ValueError, match="train.jsonl:1"):
        train_sft(SFTConfig(data=str(bad), init=setup[0], out=str(tmp_path / "o"), steps=1, progress=False))


def test_the_command(setup, capsys):
    from mimo.cli.main import main

    model, data, root = setup
    out = str(root / "cli")
    args = ["sft", "--data", data, "--from", model, "--out", out, "--steps", "2", "--batch-size", "2",
            "--max-len", "1024", "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "stopped at step 2/2" in text and "final" in text
    # --resume takes the run's own settings: nothing to add, so it stops where it was; a step logged after the
    # last checkpoint (a run killed before it saved) is dropped from the metrics, as the resumed run logs it again
    metrics = root / "cli" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write(json.dumps({"step": 3, "loss": 1.0}) + "\n")
    assert main(["sft", "--out", out, "--resume", "--no-progress"]) == 0
    assert "stopped at step 2/2" in capsys.readouterr().out
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]
    # another schedule cannot continue this run exactly: refused, with the reason
    assert main(["sft", "--out", out, "--resume", "--steps", "3", "--no-progress"]) != 0
    assert "settings" in capsys.readouterr().err


def test_batches_group_similar_lengths_and_cover_every_row():
    from mimo.posttrain.sft import SFTData
    from mimo.posttrain.sft_data import SFTRow

    rows = [SFTRow(list(range(n)), [True] * n) for n in ([5] * 40 + [300] * 40)]
    data = SFTData(rows, pad_id=0, extra=4, batch_size=8, seed=1)
    widths, seen = [], []
    for _ in range(10):  # one epoch: 80 rows in batches of 8
        ids, mask = data.next_batch()
        widths.append(ids.shape[1])
        seen += [int(m.sum()) for m in mask]
    assert sorted(seen) == sorted(len(r.ids) for r in rows)  # every row once per epoch
    assert sum(w == 9 for w in widths) >= 4  # most short rows share batches with short rows only
    state = data.state_dict()
    nxt = data.next_batch()
    again = SFTData(rows, pad_id=0, extra=4, batch_size=8, seed=1)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch()[0], nxt[0])  # the exact position survives a restart


def test_a_run_continued_from_its_exported_model_goes_on_with_its_schedule_and_data(setup, tmp_path, capsys):
    """A machine that keeps only the exported model (bf16 + training_state.json) goes on from it: the same steps,
    schedule and batches as the uninterrupted run; only AdamW's moments restart, with the lr re-warmed."""
    from mimo.cli.main import main

    model, data, root = setup
    full = train_sft(_cfg(setup, "c-full", checkpoint_interval=3))
    part = train_sft(_cfg(setup, "c-part", checkpoint_interval=3), should_stop=lambda step: step == 3)
    state = json.load(open(f"{part['final']}/training_state.json"))
    assert state["step"] == 3 and state["data_fingerprint"]
    rc = main(["sft", "--continue-from", part["final"], "--data", data, "--out", str(tmp_path / "cont"),
               "--rewarm-steps", "2", "--no-progress"])
    assert rc == 0 and "stopped at step 6/6" in capsys.readouterr().out
    a = [json.loads(line) for line in open(f"{root}/c-full/metrics.jsonl")]
    b = [json.loads(line) for line in open(tmp_path / "cont" / "metrics.jsonl")]
    assert [r["step"] for r in b] == [4, 5, 6]
    assert [r["lr"] for r in b] == pytest.approx([a[3]["lr"] / 2, a[4]["lr"], a[5]["lr"]])  # re-warmed over 2 steps
    assert [r["trained_tokens"] for r in b] == [r["trained_tokens"] for r in a[3:]]  # the same batches
    assert b[0]["main_loss"] == pytest.approx(a[3]["main_loss"], rel=0.02)  # bf16-rounded weights
    assert full["step"] == 6
    # resuming the continued run keeps its re-warm
    cfg = _cfg(setup, "c-cont2", continue_from=part["final"], rewarm_steps=2, checkpoint_interval=1)
    train_sft(cfg, should_stop=lambda step: step == 4)
    train_sft(SFTConfig(**{**cfg.__dict__, "resume": True}))
    c = [json.loads(line) for line in open(f"{root}/c-cont2/metrics.jsonl")]
    assert [r["lr"] for r in c] == [r["lr"] for r in b] and [r["main_loss"] for r in c] == [r["main_loss"] for r in b]
    # other settings or other data cannot continue it; a directory without a training state is refused by name
    with pytest.raises(ValueError, match="lr"):
        train_sft(_cfg(setup, "c-bad", continue_from=part["final"], lr=1e-3))
    other = tmp_path / "other"
    write_domains(other, seed=1, counts={"train": 6, "heldout": 2})
    with pytest.raises(ValueError, match="other data"):
        train_sft(SFTConfig(**{**_cfg(setup, "c-bad2").__dict__, "data": str(other), "continue_from": part["final"]}))
    with pytest.raises(ValueError, match="training_state.json"):
        train_sft(_cfg(setup, "c-bad3", continue_from=model))
