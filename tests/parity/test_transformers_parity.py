"""Our trunk against transformers' MiMoV2FlashForCausalLM, the reference we did not write.

Random tiny checkpoints with non-trivial sinks, router biases and norms; batch > 1; sequences
several sliding windows long; fp32 logits within 1e-4.
"""

import pytest
import torch

from mimo.checkpoint import MiMoForCausalLM
from tests.helpers import random_model, rewrite_config, tiny_config

transformers = pytest.importorskip("transformers")
TOL = 1e-4


def _tf_model(seed: int, **cfg) -> "transformers.MiMoV2FlashForCausalLM":
    torch.manual_seed(seed)
    base = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=1, head_dim=24, v_head_dim=16, moe_intermediate_size=16, n_routed_experts=8,
                num_experts_per_tok=2, sliding_window=6)
    base.update(cfg)
    config = transformers.MiMoV2FlashConfig(**base)
    config._attn_implementation = "eager"
    model = transformers.MiMoV2FlashForCausalLM(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("sinks"):
                p.copy_(torch.randn(p.shape, generator=g) * 2)
            elif name.endswith("e_score_correction_bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
    return model


CASES = [
    dict(seed=0),
    dict(seed=1, n_group=4, topk_group=2, num_experts_per_tok=3),
    dict(seed=2, num_hidden_layers=7, num_key_value_heads=2, sliding_window=4, routed_scaling_factor=2.5),
    dict(seed=3, norm_topk_prob=False, attention_value_scale=1.0, n_group=2, topk_group=1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c['seed']}")
def test_transformers_save_our_load_same_logits(tmp_path, case, device):
    case = dict(case)
    seed = case.pop("seed")
    ref = _tf_model(seed, **case)
    ref.save_pretrained(tmp_path)
    ours = MiMoForCausalLM.from_pretrained(tmp_path).to(device)
    ref.to(device)
    ids = torch.randint(0, 96, (3, 4 * ref.config.sliding_window + 3), generator=torch.Generator().manual_seed(seed))
    ids = ids.to(device)
    with torch.no_grad():
        want = ref(ids).logits
        got = ours(ids).logits
        assert (got - want).abs().max().item() < TOL
        ours.set_attention_backend("sdpa")
        assert (ours(ids).logits - want).abs().max().item() < TOL


def test_hub_spelling_with_custom_pattern_and_thetas(tmp_path):
    layer_types = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    rope = {"full_attention": {"rope_type": "default", "rope_theta": 777.0, "partial_rotary_factor": 0.5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 31.0, "partial_rotary_factor": 0.5}}
    ref = _tf_model(5, num_hidden_layers=5, layer_types=layer_types, rope_parameters=rope,
                    mlp_layer_types=["dense", "sparse", "dense", "sparse", "sparse"])
    ref.save_pretrained(tmp_path)
    d = rewrite_config(str(tmp_path), keep="hub")
    assert "layer_types" not in d and d["hybrid_layer_pattern"] == [1, 0, 1, 1, 0]
    ours = MiMoForCausalLM.from_pretrained(tmp_path)
    assert ours.config.theta("full_attention") == 777.0 and ours.config.sliding_window == ref.config.sliding_window
    ids = torch.randint(0, 96, (2, 25), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids).logits - ref(ids).logits).abs().max().item() < TOL


def test_hub_file_as_released_means_window_plus_one(tmp_path):
    """The released file says sliding_window = sliding_window_size = 128; transformers reads 129 keys."""
    ref = _tf_model(6, sliding_window=6)
    ref.save_pretrained(tmp_path)
    rewrite_config(str(tmp_path), keep="hub")  # writes sliding_window = sliding_window_size = 5
    ours = MiMoForCausalLM.from_pretrained(tmp_path)
    assert ours.config.sliding_window == 6
    reread = transformers.MiMoV2FlashConfig.from_pretrained(tmp_path)
    assert reread.sliding_window == 6


@pytest.mark.parametrize("seed", [0, 1])
def test_our_save_transformers_load_same_logits(tmp_path, seed, device):
    ours = random_model(tiny_config(sliding_window=5, num_hidden_layers=6, n_group=2, topk_group=1), seed=seed)
    ours.save_pretrained(tmp_path)
    ours.to(device)
    ref = transformers.MiMoV2FlashForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval().to(device)
    ids = torch.randint(0, 128, (2, 21), generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        assert (ours(ids).logits - ref(ids).logits).abs().max().item() < TOL
    # and back: transformers' save of our weights loads into the same model again (MTP aside: transformers drops it)
    ref.save_pretrained(tmp_path / "again")
    back = MiMoForCausalLM.from_pretrained(tmp_path / "again").to(device)
    assert back.config.num_mtp_layers == 0
    with torch.no_grad():
        assert (back(ids).logits - ours(ids).logits).abs().max().item() < TOL
