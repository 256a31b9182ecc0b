import json

import pytest

from mimo.config import FULL, SLIDING, MiMoConfig, default_layer_types, preset

HUB_FLASH = {  # the released config.json's architecture fields (spec §1)
    "architectures": ["MiMoV2FlashForCausalLM"], "model_type": "mimo_v2_flash",
    "hidden_size": 4096, "num_hidden_layers": 48, "vocab_size": 152576, "intermediate_size": 16384,
    "moe_intermediate_size": 2048, "num_attention_heads": 64, "num_key_value_heads": 4, "head_dim": 192,
    "v_head_dim": 128, "swa_num_attention_heads": 64, "swa_num_key_value_heads": 8, "swa_head_dim": 192,
    "swa_v_head_dim": 128, "hybrid_layer_pattern": [0, 1, 1, 1, 1, 0] + [1, 1, 1, 1, 1, 0] * 7,
    "moe_layer_freq": [0] + [1] * 47, "sliding_window": 128, "sliding_window_size": 128, "attention_chunk_size": 128,
    "add_swa_attention_sink_bias": True, "add_full_attention_sink_bias": False, "attention_value_scale": 0.707,
    "partial_rotary_factor": 0.334, "rope_theta": 5000000, "swa_rope_theta": 10000, "rope_scaling": None,
    "layernorm_epsilon": 1e-05, "hidden_act": "silu", "attention_bias": False, "n_routed_experts": 256,
    "n_shared_experts": None, "num_experts_per_tok": 8, "n_group": 1, "topk_group": 1, "norm_topk_prob": True,
    "routed_scaling_factor": None, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
    "max_position_embeddings": 262144, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]},
}


def test_hub_spelling_parses_to_the_flash_preset():
    c = MiMoConfig.from_dict(HUB_FLASH)
    flash = preset("flash")
    assert c.layer_types == flash.layer_types
    assert [i for i, t in enumerate(c.layer_types) if t == FULL] == [0, 5, 11, 17, 23, 29, 35, 41, 47]
    assert c.mlp_layer_types[0] == "dense" and all(t == "sparse" for t in c.mlp_layer_types[1:])
    assert c.sliding_window == 129  # transformers: sliding_window_size 128 -> 129 visible keys
    assert c.num_kv_heads(FULL) == 4 and c.num_kv_heads(SLIDING) == 8
    assert c.rotary_dim(FULL) == 64 and c.theta(FULL) == 5e6 and c.theta(SLIDING) == 1e4
    assert c.routed_scaling_factor == 1.0 and c.rms_norm_eps == 1e-5
    assert c.has_sinks(SLIDING) and not c.has_sinks(FULL)
    assert c.quantization_config["quant_method"] == "fp8"
    assert c.extra == {"attention_chunk_size": 128}


def test_native_spelling_matches_transformers_config():
    transformers = pytest.importorskip("transformers")
    tc = transformers.MiMoV2FlashConfig(num_hidden_layers=8, sliding_window=17)
    c = MiMoConfig.from_dict(tc.to_dict())
    assert c.layer_types == tuple(tc.layer_types)
    assert c.sliding_window == 17
    assert c.num_kv_heads(SLIDING) == 2 * tc.num_key_value_heads


def test_sliding_window_mapping_follows_transformers():
    transformers = pytest.importorskip("transformers")
    for d in ({"sliding_window": 128, "sliding_window_size": 128}, {"sliding_window": 50}, {"sliding_window_size": 7}):
        tc = transformers.MiMoV2FlashConfig(num_hidden_layers=2, **d)
        base = {"vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
                "num_key_value_heads": 1, "head_dim": 6, "v_head_dim": 4}
        assert MiMoConfig.from_dict({**base, **d}).sliding_window == tc.sliding_window, d


def test_round_trip_through_to_dict_keeps_everything():
    c = MiMoConfig.from_dict(HUB_FLASH).replace(num_nextn_predict_layers=3)
    d = json.loads(json.dumps(c.to_dict()))
    again = MiMoConfig.from_dict(d)
    assert again == c
    # both spellings present and consistent
    assert d["sliding_window"] == d["sliding_window_size"] + 1
    assert d["hybrid_layer_pattern"] == [1 if t == SLIDING else 0 for t in d["layer_types"]]
    assert d["rope_parameters"]["sliding_attention"]["rope_theta"] == d["swa_rope_theta"]


def test_default_layer_types():
    assert default_layer_types(12) == tuple(FULL if i in (0, 5, 11) else SLIDING for i in range(12))


BASE = {"vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 8, "v_head_dim": 4, "n_routed_experts": 4, "num_experts_per_tok": 2}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hybrid_layer_pattern": [0, 1]}, "hybrid_layer_pattern"),
        ({"layer_types": ["full_attention"] * 4}, "layer_types"),
        ({"moe_layer_freq": [0, 1, 1, 1]}, "moe_layer_freq"),
        ({"layer_types": ["full_attention", "local", "full_attention"]}, "unknown kind"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"num_experts_per_tok": 9}, "num_experts_per_tok"),
        ({"n_group": 3}, "n_group"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"type": "yarn"}}, "rope_scaling"),
        ({"hidden_size": "16"}, "hidden_size"),
        ({"layer_types": ["full_attention"] * 3, "hybrid_layer_pattern": [1, 1, 1]}, "disagree"),
    ],
)
def test_bad_config_names_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        MiMoConfig.from_dict({**BASE, **change})


@pytest.mark.parametrize("field", ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"])
def test_missing_required_field(field):
    d = dict(BASE)
    del d[field]
    with pytest.raises(ValueError, match=f"missing required field.*{field}"):
        MiMoConfig.from_dict(d)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        MiMoConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        MiMoConfig.from_pretrained(tmp_path)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
