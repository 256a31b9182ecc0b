"""FP8 e4m3 block-quantized checkpoints: both scale layouts load and equal a plain dequantization."""

import math
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from mimo.checkpoint import MiMoForCausalLM
from mimo.config import FULL
from mimo.ops.fp8 import dequantize_block_fp8, quantize_block_fp8
from tests.helpers import random_model, tiny_config


def _fp8_config():
    # head_dim 192 and 4 full-attention KV heads: k_proj has 768 rows, the released model's per-head case
    return tiny_config(hidden_size=160, head_dim=192, v_head_dim=128, num_attention_heads=4, num_key_value_heads=4,
                       moe_intermediate_size=136, intermediate_size=200, vocab_size=64, num_hidden_layers=2,
                       num_nextn_predict_layers=1)


def _naive_dequant(q, scale, chunk_rows=None):
    """Element by block, written out plainly: the oracle."""
    rows, cols = q.shape
    out = torch.empty(rows, cols)
    per = math.ceil((chunk_rows or rows) / 128)
    for r0 in range(0, rows, 128 if chunk_rows is None else chunk_rows):
        span = chunk_rows or rows
        for i in range(per):
            a, b = r0 + i * 128, min(r0 + (i + 1) * 128, r0 + span)
            srow = (r0 // span) * per + i
            for j in range(math.ceil(cols / 128)):
                out[a:b, j * 128:(j + 1) * 128] = q[a:b, j * 128:(j + 1) * 128].float() * scale[srow, j]
        if chunk_rows is None:
            break
    return out


def _quantize_dir(src, dst, cfg):
    sd = load_file(os.path.join(src, "model.safetensors"))
    out, oracle = {}, {}
    for name, t in sd.items():
        fp8 = t.ndim == 2 and name.endswith("proj.weight") and "o_proj" not in name
        if not fp8:
            out[name] = t
            continue
        chunked = name.endswith("self_attn.k_proj.weight") and name.startswith("model.layers.0.")
        n_chunks = cfg.num_kv_heads(FULL) if chunked else 1
        q, s = quantize_block_fp8(t, n_chunks=n_chunks)
        if chunked:
            assert s.shape == (8, 2)  # 4 heads x ceil(192/128) rows, not ceil(768/128) = 6
        out[name], out[name + "_scale_inv"] = q, s
        oracle[name] = _naive_dequant(q, s, t.shape[0] // n_chunks if chunked else None)
    os.makedirs(dst, exist_ok=True)
    save_file(out, os.path.join(dst, "model.safetensors"))
    cfg.save(dst)
    return oracle


def test_fp8_checkpoint_loads_as_plain_dequantization(tmp_path):
    cfg = _fp8_config()
    random_model(cfg, seed=0).save_pretrained(tmp_path / "bf")
    oracle = _quantize_dir(tmp_path / "bf", tmp_path / "fp8", cfg)
    model = MiMoForCausalLM.from_pretrained(tmp_path / "fp8", dtype="float32")  # an explicit dtype dequantizes
    sd = model.state_dict()
    assert torch.equal(sd["model.layers.0.self_attn.k_proj.weight"], oracle["model.layers.0.self_attn.k_proj.weight"])
    assert torch.equal(sd["model.mtp.layers.0.mlp.down_proj.weight"], oracle["model.mtp.layers.0.mlp.down_proj.weight"])
    assert torch.equal(sd["model.layers.1.mlp.experts.up_proj"][3], oracle["model.layers.1.mlp.experts.3.up_proj.weight"])
    assert torch.equal(sd["model.layers.1.mlp.experts.down_proj"][5], oracle["model.layers.1.mlp.experts.5.down_proj.weight"])
    # and the model still computes something close to the unquantized one
    ref = MiMoForCausalLM.from_pretrained(tmp_path / "bf", dtype="float32")
    ids = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(0))  # not the global RNG: order-independent
    with torch.no_grad():
        assert (model(ids).logits - ref(ids).logits).abs().max() < 0.05


def test_uniform_grid_would_misscale_per_head_layout():
    w = torch.randn(768, 160)
    w[192:384] *= 50  # head 1 much larger: its blocks get their own scales
    q, s = quantize_block_fp8(w, n_chunks=4)
    got = dequantize_block_fp8(q, s, chunk_candidates=(4,))
    assert (got - w).abs().max() / w.abs().max() < 0.07
    assert torch.equal(got, _naive_dequant(q, s, 192))


def test_scale_shape_that_fits_no_rule():
    q, _ = quantize_block_fp8(torch.randn(256, 256))
    with pytest.raises(ValueError, match="fits neither"):
        dequantize_block_fp8(q, torch.ones(5, 2))
    with pytest.raises(ValueError, match="block columns"):
        dequantize_block_fp8(q, torch.ones(2, 3))


def test_fp8_without_scale_is_an_error(tmp_path):
    cfg = _fp8_config()
    random_model(cfg).save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["model.layers.0.self_attn.q_proj.weight"] = sd["model.layers.0.self_attn.q_proj.weight"].to(torch.float8_e4m3fn)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="q_proj.weight has no .*weight_scale_inv"):
        MiMoForCausalLM.from_pretrained(tmp_path)
