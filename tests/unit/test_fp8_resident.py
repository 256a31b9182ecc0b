"""FP8 kept as FP8 (``dtype="auto"``): the release's layout loads without widening, computes what the same
checkpoint dequantized to fp32 computes, saves back as it was, and takes about its file size in memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import mimo.ops.linear as linear_ops
from mimo import LLM, SamplingParams
from mimo.checkpoint import MiMoForCausalLM
from mimo.config import preset
from mimo.ops import kernels
from mimo.ops.fp8 import FP8
from tests.helpers import random_fp8_checkpoint, random_model, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config():
    # head_dim 192 and 4 full-attention KV heads: layer 0's k_proj has 768 rows, the release's per-head grid
    return tiny_config(hidden_size=160, head_dim=192, v_head_dim=128, num_attention_heads=4, num_key_value_heads=4,
                       moe_intermediate_size=136, intermediate_size=200, vocab_size=64, num_hidden_layers=3,
                       sliding_window=5)


@pytest.fixture(scope="module", params=[128, 16], ids=["block128", "block16"])
def fp8_dir(request, tmp_path_factory):
    """A random model written in the release's FP8 layout; everything not quantized kept fp32 (so the FP8 model
    and the dequantized one compute in the same dtype and differ only by summation order)."""
    d = tmp_path_factory.mktemp(f"fp8-{request.param}")
    random_model(_config(), seed=3).save_pretrained(d, quantization="fp8", block=request.param, dtype=torch.float32)
    return str(d), request.param


def test_fp8_stays_fp8_with_its_scales(fp8_dir):
    path, block = fp8_dir
    cfg = json.load(open(os.path.join(path, "config.json")))
    assert cfg["quantization_config"]["weight_block_size"] == [block, block]
    assert "model.layers.0.self_attn.o_proj" in cfg["quantization_config"]["ignored_layers"]
    stored = load_file(os.path.join(path, "model.safetensors"))
    k0 = stored["model.layers.0.self_attn.k_proj.weight_scale_inv"]
    assert k0.shape[0] == 4 * -(-192 // block)  # restarts per KV head, as in the release
    model = MiMoForCausalLM.from_pretrained(path)
    attn, moe = model.model.layers[0].self_attn, model.model.layers[1].mlp
    assert attn.q_proj.weight.dtype == attn.k_proj.weight.dtype == FP8 and attn.o_proj.weight.dtype == torch.float32
    assert moe.experts.gate_proj.dtype == FP8 and moe.experts.gate_proj_scale_inv.shape[0] == 8
    assert moe.gate.weight.dtype == torch.float32 and model.model.mtp.layers[0].mlp.up_proj.weight.dtype == FP8
    assert not attn.q_proj.weight.requires_grad
    assert torch.equal(attn.k_proj.weight_scale_inv, k0)


def test_logits_equal_the_dequantized_checkpoint(fp8_dir, monkeypatch):
    path, _ = fp8_dir
    fp8 = MiMoForCausalLM.from_pretrained(path)
    wide = MiMoForCausalLM.from_pretrained(path, dtype="float32")
    ids = torch.randint(0, 64, (2, 23), generator=torch.Generator().manual_seed(0))
    long = torch.randint(0, 64, (2, 80), generator=torch.Generator().manual_seed(1))  # 160 rows: prefill's GEMMs
    kernels.load()  # as the engine does (where they cannot build, everything below takes the GEMM path)
    with torch.no_grad():
        for m in (fp8, wide):
            m.set_attention_backend("sdpa")
        want, want_long = wide(ids).logits, wide(long).logits
        # Up to EXACT_ROWS rows (decode, verify, a short prompt): the FP8 kernels. More rows: one weight
        # dequantized at a time, then a GEMM in fp32 (on AVX2 CPUs) or in bf16 (with AVX512-BF16 or AMX).
        monkeypatch.setattr(linear_ops, "_fast_bf16_gemm", lambda: False)
        got = fp8(ids).logits
        step = torch.cat([fp8(ids[:, : i + 1]).logits[:, -1:] for i in range(3)], dim=1)
        got_long = fp8(long).logits
        monkeypatch.setattr(linear_ops, "_fast_bf16_gemm", lambda: True)
        got_long_bf16 = fp8(long).logits
    # fp32 products of the same dequantized weights: only the summation order differs
    for a, b in ((got, want), (step, want[:, :3]), (got_long, want_long)):
        assert (a - b).abs().max() / b.abs().max() < 1e-4
    # a bf16 GEMM rounds the activations and the dequantized weights to bf16 (8 significant bits) first
    assert (got_long_bf16 - want_long).abs().max() / want_long.abs().max() < 2e-2


@pytest.mark.parametrize("k", [0, 3])
def test_greedy_and_speculative_outputs_equal_the_dequantized_model(fp8_dir, k):
    path, _ = fp8_dir
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    prompts = [[3, 9, 1, 44], [i % 60 for i in range(17)]]
    want = [o.outputs[0].token_ids for o in LLM(path, dtype="float32").generate(prompts, params)]
    got = [o.outputs[0].token_ids for o in LLM(path, num_speculative_tokens=k).generate(prompts, params)]
    assert got == want


@pytest.fixture(scope="module")
def release_like_dir(tmp_path_factory):
    """FP8 in the release's layout with the rest in bf16 (o_proj, embeddings, lm_head) and the router in fp32."""
    d = tmp_path_factory.mktemp("fp8-bf16")
    random_model(_config(), seed=3).save_pretrained(d, quantization="fp8", block=128, dtype=torch.bfloat16)
    return str(d)


@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
def test_speculative_logprobs_are_the_plain_ones_bit_for_bit(release_like_dir, policy):
    # Batch invariance of a whole eager step: a verify's positions (3 sequences x 4) get exactly the logits plain
    # steps give them (decode kernels, attention summed in position order, router and its sigmoid), so greedy
    # speculation cannot part from plain greedy even on a tie.
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=1)
    prompts = [[3, 9, 1, 44], [i % 60 for i in range(17)], [5, 6, 7]]
    plain = LLM(release_like_dir).generate(prompts, params)
    spec = LLM(release_like_dir, num_speculative_tokens=3, speculative_policy=policy).generate(prompts, params)
    for a, b in zip(plain, spec):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert [t.logprob for t in a.outputs[0].logprobs] == [t.logprob for t in b.outputs[0].logprobs]


def test_an_fp8_model_saves_as_it_was_loaded(fp8_dir, tmp_path):
    path, _ = fp8_dir
    MiMoForCausalLM.from_pretrained(path).save_pretrained(tmp_path)
    a, b = load_file(os.path.join(path, "model.safetensors")), load_file(os.path.join(tmp_path, "model.safetensors"))
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8))
    with pytest.raises(ValueError, match="dequantize_"):
        MiMoForCausalLM.from_pretrained(path).save_pretrained(tmp_path / "x", dtype=torch.bfloat16)


def test_dequantize_in_place_equals_loading_dequantized(fp8_dir):
    path, _ = fp8_dir
    model = MiMoForCausalLM.from_pretrained(path).dequantize_(torch.float32)
    wide = MiMoForCausalLM.from_pretrained(path, dtype="float32")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), wide.state_dict().values()))
    assert model.model.layers[1].mlp.experts.gate_proj.requires_grad


def test_without_mmap_the_model_is_the_same(fp8_dir):
    path, _ = fp8_dir
    a, b = MiMoForCausalLM.from_pretrained(path), MiMoForCausalLM.from_pretrained(path, mmap=False)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x.view(torch.uint8), y.view(torch.uint8)), name


def test_a_weight_with_nan_codes_is_refused(fp8_dir, tmp_path):
    path, _ = fp8_dir
    sd = load_file(os.path.join(path, "model.safetensors"))
    name = "model.layers.1.self_attn.v_proj.weight"
    codes = sd[name].view(torch.uint8).clone()
    codes[0, 0] = 0x7F
    sd[name] = codes.view(FP8)
    os.makedirs(tmp_path / "nan")
    save_file(sd, tmp_path / "nan" / "model.safetensors")
    with open(os.path.join(path, "config.json")) as f, open(tmp_path / "nan" / "config.json", "w") as g:
        g.write(f.read())
    with pytest.raises(ValueError, match="v_proj.weight holds 1 NaN code"):
        MiMoForCausalLM.from_pretrained(tmp_path / "nan")


_RSS = """
import json, sys, torch
from mimo.checkpoint import MiMoForCausalLM

def rss(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))

torch.zeros(1)
base = rss("VmRSS:")
model = MiMoForCausalLM.from_pretrained(sys.argv[1], mmap=sys.argv[2] == "mmap")
print(json.dumps({"base": base, "after": rss("VmRSS:"), "peak": rss("VmHWM:")}))
"""


@pytest.mark.parametrize("mode", ["mmap", "no-mmap"])
def test_loading_the_fp8_bench_preset_takes_about_its_file_size(tmp_path, mode):
    """Never two copies: after the load (and at its peak) the process holds about the file's bytes."""
    path = random_fp8_checkpoint(preset("bench"), tmp_path / "bench-fp8")
    size = os.path.getsize(os.path.join(path, "model.safetensors"))
    out = subprocess.run([sys.executable, "-c", _RSS, path, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": ROOT}).stdout
    m = json.loads(out)
    assert m["after"] - m["base"] <= 1.15 * size, (m, size)
    assert m["peak"] - m["base"] <= 1.15 * size, (m, size)
