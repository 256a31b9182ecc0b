"""mimo info --plan: what a checkpoint needs in memory, from headers or from config + index alone."""

import json

import pytest
import torch

from mimo.checkpoint.memory_plan import (
    Layout,
    kv_bytes_per_device,
    layout_from_config,
    per_device_bytes,
    shard_fraction,
    stored_tensors,
)
from mimo.cli.main import main
from mimo.config import MiMoConfig, preset
from mimo.model.sizes import kv_sizes, parameter_counts
from tests.helpers import random_fp8_checkpoint, random_model, tiny_config
from tests.unit.test_config import HUB_FLASH


def _spec_names() -> dict[str, str]:
    """The release's tensor names as the spec's checkpoint table lists them (written out here, not derived
    from mimo's model): a weight listed with ``_scale_inv`` is FP8."""
    names = ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"]
    pattern = HUB_FLASH["hybrid_layer_pattern"]
    for L in range(48):
        p = f"model.layers.{L}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight", p + "self_attn.o_proj.weight"]
        for w in ("q_proj", "k_proj", "v_proj"):
            names += [p + f"self_attn.{w}.weight", p + f"self_attn.{w}.weight_scale_inv"]
        if pattern[L] == 1:
            names.append(p + "self_attn.attention_sink_bias")
        if L == 0:
            for w in ("gate_proj", "up_proj", "down_proj"):
                names += [p + f"mlp.{w}.weight", p + f"mlp.{w}.weight_scale_inv"]
        else:
            names += [p + "mlp.gate.weight", p + "mlp.gate.e_score_correction_bias"]
            for e in range(256):
                for w in ("gate_proj", "up_proj", "down_proj"):
                    names += [p + f"mlp.experts.{e}.{w}.weight", p + f"mlp.experts.{e}.{w}.weight_scale_inv"]
    for i in range(3):
        p = f"model.mtp.layers.{i}."
        names += [p + n + ".weight" for n in ("enorm", "hnorm", "input_layernorm", "pre_mlp_layernorm",
                                              "final_layernorm", "eh_proj", "self_attn.o_proj")]
        names.append(p + "self_attn.attention_sink_bias")
        for w in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj",
                  "mlp.down_proj"):
            names += [p + w + ".weight", p + w + ".weight_scale_inv"]
    return {n: f"model-{i % 145 + 1:05d}-of-00145.safetensors" for i, n in enumerate(names)}


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    """The release's config.json and index, without any shard (as before a 309 GB download)."""
    d = tmp_path_factory.mktemp("release")
    cfg = {**HUB_FLASH, "quantization_config": {**HUB_FLASH["quantization_config"], "ignored_layers": [
        f"model.layers.{i}.self_attn.o_proj" for i in range(48)]}}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": _spec_names()}))
    return d


def test_release_config_and_index_without_shards(release_dir, capsys):
    cfg = MiMoConfig.from_pretrained(release_dir)
    assert cfg.num_mtp_layers == 3  # counted from the index: the shards are not there
    tensors, source = stored_tensors(str(release_dir), cfg)
    assert "index" in source
    assert {t.name for t in tensors} == set(_spec_names())  # every listed tensor, nothing else
    by = {t.name: t for t in tensors}
    assert by["model.layers.3.self_attn.q_proj.weight_scale_inv"].shape == (96, 32)
    assert by["model.layers.0.self_attn.k_proj.weight_scale_inv"].shape == (8, 32)  # per KV head: 4 x 2
    assert by["model.layers.0.mlp.down_proj.weight_scale_inv"].shape == (32, 128)
    assert by["model.layers.5.mlp.experts.7.down_proj.weight"].dtype == torch.float8_e4m3fn
    assert by["model.layers.5.self_attn.o_proj.weight"].dtype == torch.bfloat16
    assert by["model.layers.5.mlp.gate.weight"].dtype == torch.float32
    # the stored weights add up to the parameter count (scales aside), one byte per FP8 number
    params = sum(t.numel for t in tensors if not t.name.endswith(("_scale_inv", "e_score_correction_bias")))
    assert params == parameter_counts(cfg).total_with_mtp  # (the balancing bias is state, not a parameter)

    assert main(["info", "--model", str(release_dir), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "total (no MTP):                       308.779B" in out
    assert "active per token:                     15.446B" in out
    assert "float8_e4m3fn" in out and "bfloat16" in out
    for row in ("TP 8 ", "TP 8 + EP 8", "DP 2 x TP 4 + EP 8"):
        assert row in out
    dp_row = next(line for line in out.splitlines() if "DP 2 x TP 4 + EP 8" in line)
    assert "not run by mimo" in dp_row  # SGLang's DP attention: for comparison only
    assert not any("not run by mimo" in line for line in out.splitlines() if line.strip().startswith("TP "))
    assert main(["info", "--model", str(release_dir), "--plan", "--json", "--devices", "2,8"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    fp8 = plan["stored"]["float8_e4m3fn"]["bytes"]
    assert 300e9 < fp8 < plan["stored_total_bytes"] < 320e9
    host = plan["one_host_weights_bytes"]
    assert host["auto"] == plan["stored_total_bytes"] and 1.9 < host["bfloat16"] / host["auto"] < 2.0
    assert host["float32"] > 1.2e12
    rows = {r["layout"]: r for r in plan["layouts"]}
    assert rows["TP 2"]["free_bytes"] < 0  # 156 GB of FP8 per device does not fit 141 GB
    tp8 = rows["TP 8 + EP 8"]
    assert plan["stored_total_bytes"] / 8 < tp8["weights_bytes"] < plan["stored_total_bytes"] / 8 * 1.05
    assert tp8["free_bytes"] > 0


def test_derived_layout_matches_the_headers(tmp_path):
    """What the plan derives from a config is what the checkpoint writers put in the files."""
    cfg = tiny_config()
    for block in (16, 128):
        d = random_fp8_checkpoint(cfg, tmp_path / f"fp8-{block}", block=block)
        loaded = MiMoConfig.from_pretrained(d)
        headers, source = stored_tensors(d, loaded)
        assert source == "the safetensors headers"
        assert {(t.name, t.dtype, t.shape) for t in headers} == \
            {(t.name, t.dtype, t.shape) for t in layout_from_config(loaded)}
    random_model(cfg).save_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    loaded = MiMoConfig.from_pretrained(tmp_path / "bf16")
    headers, _ = stored_tensors(str(tmp_path / "bf16"), loaded)
    assert {(t.name, t.dtype, t.shape) for t in headers} == \
        {(t.name, t.dtype, t.shape) for t in layout_from_config(loaded)}


def test_sharding_rules():
    c = preset("flash")
    tp8, ep8 = Layout(tp=8), Layout(tp=8, ep=8)
    assert shard_fraction(c, "model.layers.0.self_attn.k_proj.weight", tp8) == 1 / 4  # 4 KV heads: replicated x2
    assert shard_fraction(c, "model.layers.1.self_attn.k_proj.weight", tp8) == 1 / 8  # 8 SWA KV heads
    assert shard_fraction(c, "model.layers.1.self_attn.attention_sink_bias", tp8) == 1 / 8
    assert shard_fraction(c, "model.layers.1.mlp.gate.weight", tp8) == 1.0
    assert shard_fraction(c, "model.mtp.layers.0.eh_proj.weight", tp8) == 1.0
    assert shard_fraction(c, "model.layers.1.mlp.experts.3.up_proj.weight", ep8) == 1 / 8
    assert Layout(tp=3).invalid(c) and Layout(tp=8, ep=4).invalid(c) and Layout(tp=16).invalid(c) is None
    # one device holds everything; its KV cache is the single-host figure
    tensors = layout_from_config(c)
    assert per_device_bytes(c, tensors, Layout(tp=1)) == sum(t.nbytes for t in tensors)
    assert kv_bytes_per_device(c, Layout(tp=1), 32768, 3) == kv_sizes(c).total_bytes(32768) * 3
    assert kv_bytes_per_device(c, Layout(tp=4, dp=2, ep=8), 32768, 8) == kv_bytes_per_device(c, Layout(tp=4),
                                                                                            32768, 4)


def test_plan_sources_and_errors(tmp_path, capsys):
    assert main(["info", "--preset", "flash", "--plan", "--json", "--devices", "8"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan["source"].startswith("config.json")
    assert main(["info", "--preset", "flash", "--plan", "--devices", "x"]) == 2
    assert "--devices" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps(HUB_FLASH))
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    assert main(["info", "--model", str(tmp_path), "--plan"]) == 2  # a broken index is an error, not 0 MTP
    assert "not valid JSON" in capsys.readouterr().err
