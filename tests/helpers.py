"""Builders for tiny random checkpoints shared by the tests."""

from __future__ import annotations

import json
import os

import torch

from mimo.checkpoint import MiMoForCausalLM
from mimo.config import MiMoConfig, preset


def split_gate_up(w_gu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[E, 2I, D] gate rows then up rows -> contiguous gate [E, I, D] and up [E, I, D] (what Experts holds)."""
    gate, up = w_gu.chunk(2, dim=1)
    return gate.contiguous(), up.contiguous()


def tiny_config(**changes) -> MiMoConfig:
    if "num_hidden_layers" in changes:  # re-derive the per-layer lists unless given
        changes.setdefault("layer_types", ())
        changes.setdefault("mlp_layer_types", ())
    return preset("tiny").replace(**changes)


def random_model(config: MiMoConfig | None = None, seed: int = 0, nontrivial: bool = True) -> MiMoForCausalLM:
    """A random model whose sinks, router biases and norms are far from their neutral init."""
    model = MiMoForCausalLM.from_config(config or tiny_config(), seed=seed)
    if nontrivial:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in list(model.named_parameters()) + list(model.named_buffers()):
                if name.endswith("attention_sink_bias"):
                    p.copy_(torch.randn(p.shape, generator=g))
                elif name.endswith("e_score_correction_bias"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
                elif name.endswith("norm.weight"):
                    p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def oracle_model(config: MiMoConfig, seed: int = 0, draft_noise: tuple[float, ...] = ()) -> MiMoForCausalLM:
    """A model whose MTP blocks know the next token: residual stream = token embedding only, so the next token
    is f(current token), and every MTP block computes f of its input token exactly. ``draft_noise[k-1]`` > 0
    perturbs block k's input projection, so its drafts are right only for some tokens (a mix of depths)."""
    m = random_model(config, seed=seed, nontrivial=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            if hasattr(layer.mlp, "experts"):
                layer.mlp.experts.down_proj.zero_()
            else:
                layer.mlp.down_proj.weight.zero_()
        d = config.hidden_size
        for i, blk in enumerate(m.model.mtp.layers):
            blk.eh_proj.weight.zero_()
            blk.eh_proj.weight[:, :d] = torch.eye(d)
            if i < len(draft_noise) and draft_noise[i]:
                blk.eh_proj.weight[:, :d] += draft_noise[i] * torch.randn(d, d, generator=g)
            blk.self_attn.o_proj.weight.zero_()
            blk.mlp.down_proj.weight.zero_()
            blk.enorm.weight.fill_(1.0)
            blk.final_layernorm.weight.copy_(m.model.norm.weight)
    return m.eval()


def rewrite_config(directory: str, keep: str) -> dict:
    """Rewrite config.json keeping only one spelling: 'hub' or 'transformers'."""
    path = os.path.join(directory, "config.json")
    d = MiMoConfig.from_pretrained(directory).to_dict()
    hub_only = {"hybrid_layer_pattern", "moe_layer_freq", "sliding_window_size", "layernorm_epsilon", "rope_theta",
                "swa_rope_theta", "partial_rotary_factor", "swa_num_attention_heads", "swa_num_key_value_heads",
                "swa_head_dim", "swa_v_head_dim", "add_swa_attention_sink_bias", "add_full_attention_sink_bias",
                "n_shared_experts", "scoring_func", "topk_method"}
    native_only = {"layer_types", "mlp_layer_types", "rms_norm_eps", "rope_parameters"}
    drop = native_only if keep == "hub" else hub_only
    d = {k: v for k, v in d.items() if k not in drop}
    if keep == "hub":
        d["sliding_window"] = d["sliding_window_size"]  # the released file says 128 in both keys
    with open(path, "w") as f:
        json.dump(d, f, indent=2)
    return d


def tiny_model_dir(directory, vocab_size: int = 320, seed: int = 0) -> str:
    """A tiny random model with a real (tiny) byte-level BPE tokenizer, in the hub layout."""
    import sysconfig

    from mimo.tokenizer import Tokenizer, train_bpe

    stdlib = sysconfig.get_paths()["stdlib"]
    texts = []
    for name in ("abc.py", "bisect.py", "colorsys.py"):
        with open(os.path.join(stdlib, name), encoding="utf-8") as f:
            texts.append(f.read())
    tok = Tokenizer(train_bpe(texts, vocab_size))
    model = random_model(tiny_config(vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id), seed=seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


def random_fp8_checkpoint(config: MiMoConfig, directory, block: int = 128, seed: int = 0) -> str:
    """A checkpoint in the release's FP8 layout with random codes and scales, written straight to disk (no
    model in a wide dtype is ever built: fast even for the bench preset). Finite codes only; the
    full-attention k_proj has the release's per-KV-head scale grid."""
    import math

    from safetensors.torch import save_file

    from mimo.checkpoint.export import quantization_config, quantized_in_release, scale_chunks
    from mimo.checkpoint.hf_keys import param_to_hub

    with torch.device("meta"):
        meta = MiMoForCausalLM(config)
    g = torch.Generator().manual_seed(seed)
    # Random codes from one pool (windows at moving offsets): fast, and no code is NaN (0x7f, 0xff).
    pool = torch.randint(0, 256, (1 << 24,), generator=g, dtype=torch.uint8)
    pool[(pool & 0x7F) == 0x7F] ^= 1
    cursor = 0
    out: dict[str, torch.Tensor] = {}
    for name, t in meta.state_dict().items():
        for hub, target in param_to_hub(name, config.n_routed_experts):
            shape = tuple(t.shape) if target.expert is None else tuple(t.shape[1:])
            if quantized_in_release(hub) and len(shape) == 2:
                n = math.prod(shape)
                idx = (torch.arange(n) + cursor) % pool.numel() if n + cursor > pool.numel() else None
                codes = pool[idx] if idx is not None else pool[cursor : cursor + n].clone()
                cursor = (cursor + 4099 * (1 + n // 4099)) % pool.numel()
                out[hub] = codes.view(shape).view(torch.float8_e4m3fn)
                n_chunks = scale_chunks(config, hub)
                rows = n_chunks * math.ceil(shape[0] // n_chunks / block)
                out[hub + "_scale_inv"] = torch.rand(rows, math.ceil(shape[1] / block), generator=g) * 1e-3 + 1e-4
            elif hub.endswith((".mlp.gate.weight", ".mlp.gate.e_score_correction_bias")):
                out[hub] = torch.randn(shape, generator=g) * 0.02
            elif hub.endswith("norm.weight"):
                out[hub] = torch.ones(shape, dtype=torch.bfloat16)
            else:
                out[hub] = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    os.makedirs(directory, exist_ok=True)
    save_file(out, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config.replace(quantization_config=quantization_config((block, block), meta),
                   torch_dtype="bfloat16").save(directory)
    return str(directory)
