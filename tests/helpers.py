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
