"""One pre-norm decoder layer (as transformers' ``MiMoV2FlashDecoderLayer``): x + attn(norm(x)), then + ffn(norm(.))."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mimo.config import MiMoConfig
from mimo.model.layers import MLP, Attention, KVCache, MoE, RMSNorm
from mimo.ops.rope import Rope


class DecoderLayer(nn.Module):
    def __init__(self, config: MiMoConfig, index: int) -> None:
        super().__init__()
        self.index = index
        self.kind = config.layer_types[index]
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, self.kind)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoE(config) if config.is_moe(index) else MLP(config.hidden_size, config.intermediate_size)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        rope: Rope,
        cache: KVCache | None = None,
        router_out: list | None = None,
        masks: dict | None = None,
        replay: Mapping[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``replay``: decoder-layer index -> the experts [B, T, K] its MoE must use (R3; see CausalLM.trunk)."""
        x = x + self.self_attn(self.input_layernorm(x), positions, rope, cache, self.index, masks)
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, MoE):
            return x + self.mlp(h, router_out, None if replay is None else replay.get(self.index))
        return x + self.mlp(h)
