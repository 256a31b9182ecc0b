"""Strict loading: every problem with a checkpoint is an error that names it."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from mimo.checkpoint import MiMoForCausalLM
from mimo.config import MiMoConfig
from tests.helpers import random_model, tiny_config


@pytest.fixture()
def saved(tmp_path):
    model = random_model(seed=3)
    model.save_pretrained(tmp_path)
    return model, tmp_path


def _edit_weights(directory, fn):
    path = os.path.join(directory, "model.safetensors")
    sd = load_file(path)
    fn(sd)
    save_file(sd, path)


def test_round_trip_is_exact_including_mtp(saved):
    model, path = saved
    back = MiMoForCausalLM.from_pretrained(path)
    assert back.config.num_mtp_layers == 3
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_hub_names_on_disk(saved):
    _, path = saved
    keys = load_file(os.path.join(path, "model.safetensors")).keys()
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in keys
    assert "model.layers.1.mlp.gate.e_score_correction_bias" in keys
    assert "model.layers.1.self_attn.attention_sink_bias" in keys
    assert "model.layers.0.self_attn.attention_sink_bias" not in keys  # full attention: no sink
    assert "model.mtp.layers.2.eh_proj.weight" in keys
    assert not any(k.endswith(("experts.gate_proj", "experts.up_proj", "experts.down_proj")) for k in keys)


def test_sharded_save_and_load(tmp_path):
    model = random_model(seed=4)
    model.save_pretrained(tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not (tmp_path / "model.safetensors").exists()
    back = MiMoForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)


def test_mtp_depth_counted_from_weights_when_config_is_silent(saved):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    del cfg["num_nextn_predict_layers"]
    (path / "config.json").write_text(json.dumps(cfg))
    assert MiMoConfig.from_pretrained(path).num_mtp_layers == 3


def test_missing_tensor_is_named(saved):
    _, path = saved
    _edit_weights(path, lambda sd: sd.pop("model.layers.2.self_attn.k_proj.weight"))
    with pytest.raises(ValueError, match=r"1 missing tensor\(s\): model.layers.2.self_attn.k_proj.weight"):
        MiMoForCausalLM.from_pretrained(path)


def test_missing_expert_is_named(saved):
    _, path = saved
    _edit_weights(path, lambda sd: sd.pop("model.layers.1.mlp.experts.5.up_proj.weight"))
    with pytest.raises(ValueError, match="model.layers.1.mlp.experts.5.up_proj.weight"):
        MiMoForCausalLM.from_pretrained(path)


def test_missing_one_mtp_block_is_an_error(saved):
    _, path = saved
    _edit_weights(path, lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("model.mtp.layers.2.")])
    cfg = json.loads((path / "config.json").read_text())
    del cfg["num_nextn_predict_layers"]  # depth now counted from the weights: 2 blocks, loads fine
    (path / "config.json").write_text(json.dumps(cfg))
    assert MiMoForCausalLM.from_pretrained(path).config.num_mtp_layers == 2
    cfg["num_nextn_predict_layers"] = 3  # but a config that asks for 3 is strict
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model.mtp.layers.2"):
        MiMoForCausalLM.from_pretrained(path)


def test_unexpected_tensor_is_named(saved):
    _, path = saved
    _edit_weights(path, lambda sd: sd.__setitem__("model.layers.9.mlp.gate.weight", torch.zeros(2)))
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\): model.layers.9.mlp.gate.weight"):
        MiMoForCausalLM.from_pretrained(path)


def test_wrong_shape_is_named(saved):
    _, path = saved
    _edit_weights(path, lambda sd: sd.__setitem__("model.layers.0.self_attn.q_proj.weight", torch.zeros(5, 32)))
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.q_proj.weight: shape \[5, 32\], expected \[96, 32\]"):
        MiMoForCausalLM.from_pretrained(path)


def test_pickle_checkpoints_are_refused(tmp_path):
    tiny_config().save(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(ValueError, match="pickle"):
        MiMoForCausalLM.from_pretrained(tmp_path)


def test_no_weights_at_all(tmp_path):
    tiny_config().save(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        MiMoForCausalLM.from_pretrained(tmp_path)


def test_bad_config_in_directory(saved):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg["hybrid_layer_pattern"] = [0, 1]
    del cfg["layer_types"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="hybrid_layer_pattern"):
        MiMoForCausalLM.from_pretrained(path)


def test_token_ids_outside_vocab(saved):
    model, _ = saved
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 128\)"):
        model(torch.tensor([[1, 128]]))


def test_dtype_choice_keeps_router_fp32(saved):
    _, path = saved
    m = MiMoForCausalLM.from_pretrained(path, dtype="bfloat16")
    assert m.model.layers[1].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert m.model.layers[1].mlp.gate.weight.dtype == torch.float32
    assert m.model.layers[1].mlp.gate.e_score_correction_bias.dtype == torch.float32
    with pytest.raises(ValueError, match="unsupported dtype"):
        MiMoForCausalLM.from_pretrained(path, dtype="int4")


def test_mimo_info_counts_match_module_tree():
    from mimo.model.sizes import parameter_counts

    for cfg in (tiny_config(), tiny_config(num_hidden_layers=7, n_group=2)):
        model = MiMoForCausalLM(cfg)
        pc = parameter_counts(cfg)
        mtp = sum(p.numel() for n, p in model.named_parameters() if ".mtp." in n)
        assert pc.total == model.num_parameters() - mtp
        assert pc.mtp_blocks == mtp


def test_the_loader_reads_a_slice_without_the_rest(tmp_path):
    """The hook a tensor-parallel rank uses: only its rows of a tensor are read."""
    from mimo.checkpoint.loader import _Reader
    from mimo.utils.safetensors_index import weight_files
    from mimo.utils.safetensors_io import headers

    random_model(seed=5).save_pretrained(tmp_path)
    files = weight_files(str(tmp_path))
    reader = _Reader(files, headers(files), mmap_ok=False)
    name = "model.layers.1.self_attn.q_proj.weight"
    full = reader.read(name)
    assert torch.equal(reader.read_rows(name, 8, 24), full[8:24]) and reader.read_rows(name, 3, 3).shape[0] == 0
    reader.close()
