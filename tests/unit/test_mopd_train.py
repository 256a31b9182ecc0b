"""mimo mopd: rollouts from the engine on the training weights, teacher log-probs, the Eq. 7-9 step, exact resume,
routing replay (R3) and the command's teacher arguments. Tiny random models, arithmetic prompts (the shortest)."""

import json
import os

import pytest
import torch

from mimo.checkpoint import MiMoForCausalLM
from mimo.engine.config import EngineConfig
from mimo.engine.engine import Engine
from mimo.posttrain import domains
from mimo.posttrain.domains import write_domains
from mimo.posttrain.mopd_train import (
    MOPDConfig,
    answer_batch,
    answer_log_probs,
    draw_prompts,
    rollout,
    route_disagreement,
    train_mopd,
)
from mimo.tokenizer import Tokenizer
from tests.helpers import tiny_model_dir


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mopd")
    student = tiny_model_dir(root / "student", seed=0)
    # a teacher that differs: another random model with a sharper output distribution
    teacher = tiny_model_dir(root / "teacher", seed=1)
    m = MiMoForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    with torch.no_grad():
        m.lm_head.weight.mul_(8.0)
    m.save_pretrained(teacher)
    data = root / "data"
    write_domains(data, seed=0, counts={"train": 6, "heldout": 2})
    return student, teacher, str(data), root


def _cfg(setup, out, **kw):
    student, teacher, data, root = setup
    base = dict(student=student, teachers={"arithmetic": teacher}, prompts=data, out=str(root / out), steps=1,
                prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6, checkpoint_interval=2, progress=False,
                device="cpu")
    return MOPDConfig(**{**base, **kw})


def _metrics(cfg):
    return [json.loads(line) for line in open(os.path.join(cfg.out, "metrics.jsonl"))]


def test_a_teacher_equal_to_the_student_gives_zero_advantage(setup):
    cfg = _cfg(setup, "self", teachers={"arithmetic": setup[0]}, alpha=0.0)
    train_mopd(cfg)
    (row,) = _metrics(cfg)
    assert row["tokens"] > 0 and row["samples"] == 4
    assert row["reverse_kl"] == 0.0 and row["advantage"] == 0.0  # exactly: the same forward on the same tokens
    # the engine's recorded experts line up with the trainer's forward token by token (fp32 both sides)
    assert row["route_disagreement"] is not None and row["route_disagreement"] < 0.05
    assert set(row["seconds"]) == {"rollout", "reward", "teacher", "train"} and set(row["reward"]) == {"arithmetic"}
    # zero advantage: zero gradient, the weights do not move
    before = MiMoForCausalLM.from_pretrained(setup[0], dtype=torch.float32).state_dict()
    after = MiMoForCausalLM.from_pretrained(f"{cfg.out}/checkpoints/step-00000001/model").state_dict()
    for name, x in before.items():
        assert torch.equal(x, after[name]), name


def test_bf16_autocast_keeps_a_self_teacher_at_zero_and_trains(setup):
    cfg = _cfg(setup, "self-bf16", teachers={"arithmetic": setup[0]}, alpha=0.0, dtype="bf16")
    train_mopd(cfg)
    (row,) = _metrics(cfg)
    assert row["reverse_kl"] == 0.0 and row["advantage"] == 0.0  # teacher and student take the same bf16 forward
    cfg = _cfg(setup, "toward-bf16", alpha=0.0, lr=1e-3, dtype="bf16")
    train_mopd(cfg)
    (row,) = _metrics(cfg)
    assert row["reverse_kl"] != 0.0 and row["grad_norm"] > 0
    with pytest.raises(ValueError, match="dtype"):
        train_mopd(_cfg(setup, "bad-dtype", dtype="fp16"))


def test_one_step_moves_the_student_toward_the_teacher(setup):
    cfg = _cfg(setup, "toward", alpha=0.0, lr=1e-3, prompts_per_step=3, samples_per_prompt=3, max_new_tokens=8)
    train_mopd(cfg)
    # the step's rollouts again: prompts and seeds are functions of the step, so the same samples come back
    tok = Tokenizer.from_pretrained(cfg.student)
    student = MiMoForCausalLM.from_pretrained(cfg.student, dtype=torch.float32)
    engine = Engine(student, tok, EngineConfig(max_num_seqs=cfg.max_num_seqs))
    rows = rollout(engine, tok, draw_prompts({"arithmetic": domains.load(cfg.prompts, "arithmetic", "train")}, cfg, 0),
                   cfg, 0)
    assert sum(len(r.answer_ids) for r in rows) == _metrics(cfg)[0]["tokens"]
    ids, where, answer, mask = answer_batch(rows, 0, torch.device("cpu"))
    stepped = MiMoForCausalLM.from_pretrained(f"{cfg.out}/checkpoints/step-00000001/model", dtype=torch.float32)
    teacher = MiMoForCausalLM.from_pretrained(cfg.teachers["arithmetic"], dtype=torch.float32)
    with torch.no_grad():
        lp0, lp1, lt = (answer_log_probs(m, ids, where, answer) for m in (student, stepped, teacher))
    up = (lt > lp0) & mask
    down = (lt < lp0) & mask
    assert up.any() and down.any()
    delta = lp1 - lp0
    assert delta[up].mean() > 0 > delta[down].mean()  # toward the teacher's log-probs on both sides
    assert ((lp1 - lt)[mask]).mean() < ((lp0 - lt)[mask]).mean()  # the sampled-token reverse-KL estimate falls


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(setup):
    straight = train_mopd(_cfg(setup, "straight", steps=4))
    assert straight["step"] == 4
    cfg = _cfg(setup, "resumed", steps=4)
    assert train_mopd(cfg, should_stop=lambda step: step == 2)["step"] == 2
    with pytest.raises(ValueError, match="checkpoints"):
        train_mopd(cfg)  # an existing run is not overwritten
    assert train_mopd(MOPDConfig(**{**cfg.__dict__, "resume": True}))["step"] == 4
    a = MiMoForCausalLM.from_pretrained(f"{setup[3]}/straight/checkpoints/step-00000004/model")
    b = MiMoForCausalLM.from_pretrained(f"{setup[3]}/resumed/checkpoints/step-00000004/model")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert [r["step"] for r in _metrics(cfg)] == [1, 2, 3, 4]
    assert [r["reverse_kl"] for r in _metrics(cfg)] == [r["reverse_kl"] for r in _metrics(_cfg(setup, "straight"))]
    with pytest.raises(ValueError, match="settings"):
        train_mopd(MOPDConfig(**{**cfg.__dict__, "resume": True, "alpha": 0.5}))


def test_routing_replay(setup):
    model = MiMoForCausalLM.from_pretrained(setup[0], dtype=torch.float32)
    moe = [i for i in range(model.config.num_hidden_layers) if model.config.is_moe(i)]
    assert moe
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    router_out: list = []
    with torch.no_grad():
        h = model.trunk(ids, router_out=router_out)
        own = {layer: e.view(2, 7, -1) for layer, (_, e) in zip(moe, router_out)}
        assert torch.equal(model.trunk(ids, replay=own), h)  # replaying its own choice changes nothing
        other = {layer: (e + 1) % model.config.n_routed_experts for layer, e in own.items()}
        assert not torch.allclose(model.trunk(ids, replay=other), h)  # and another choice is used
    e = torch.stack(list(own.values()), dim=2)
    valid = torch.ones(2, 7, dtype=torch.bool)
    assert route_disagreement(e, e.flip(-1), valid) == 0.0  # a set, not an order
    assert route_disagreement(e, torch.stack(list(other.values()), dim=2), valid) == 1.0
    cfg = _cfg(setup, "r3", r3=True)
    train_mopd(cfg)
    (row,) = _metrics(cfg)
    assert row["r3"] and row["route_disagreement"] is not None and row["tokens"] > 0


def test_teacher_arguments(setup, tmp_path, capsys):
    from mimo.cli.main import main
    from mimo.cli.mopd import parse_teachers

    student, teacher, data, _ = setup
    assert parse_teachers([f"code={teacher}", f"tools = {student}"]) == {"code": teacher, "tools": student}
    for bad, message in ((f"math={teacher}", "unknown domain 'math'"), ("code=/no/such/dir", "not a directory"),
                         (teacher, "expected DOMAIN=DIR"), ("code=", "expected DOMAIN=DIR")):
        with pytest.raises(ValueError, match=message):
            parse_teachers([bad])
    with pytest.raises(ValueError, match="already has a teacher"):
        parse_teachers([f"code={teacher}", f"code={student}"])
    args = ["mopd", "--student", student, "--prompts", data, "--out", str(tmp_path / "o")]
    assert main(args + ["--teacher", f"math={teacher}"]) == 2
    assert "unknown domain 'math'" in capsys.readouterr().err
    assert main(args) == 2
    assert "--teacher" in capsys.readouterr().err
    assert main(args + ["--kl-weight", "0"]) == 2  # no teacher and no domains: nothing to draw prompts from
    assert "no domains" in capsys.readouterr().err
    assert main(args + ["--kl-weight", "0", "--domains", "arithmetic,maths"]) == 2
    assert "unknown domain 'maths'" in capsys.readouterr().err


def test_the_command(setup, capsys):
    from mimo.cli.main import main

    student, teacher, data, root = setup
    args = ["mopd", "--student", student, "--teacher", f"arithmetic={teacher}", "--prompts", data, "--out",
            str(root / "cli"), "--steps", "1", "--prompts-per-step", "1", "--samples-per-prompt", "2",
            "--max-new-tokens", "4", "--alpha", "0.5", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    assert "stopped at step 1/1" in capsys.readouterr().out


def test_outcome_reward_alone_needs_no_teacher(setup):
    """kl_weight 0: the loop with the GRPO advantage alone (Fig. 6's RL baseline): no teacher is loaded or asked
    for, the step trains and logs no reverse KL; with the distillation term on, a domain without a teacher is an
    error that names it."""
    cfg = _cfg(setup, "orm", teachers={}, domains=["arithmetic"], kl_weight=0.0, alpha=1.0)
    assert train_mopd(cfg)["step"] == 1
    (row,) = _metrics(cfg)
    assert row["reverse_kl"] is None and row["tokens"] > 0 and "arithmetic" in row["reward"]
    with pytest.raises(ValueError, match="no teacher for arithmetic"):
        train_mopd(_cfg(setup, "orm2", teachers={"code": setup[1]}, domains=["arithmetic"]))
