"""Modules of one decoder layer: RMSNorm, attention (GQA, partial RoPE, value scale, sinks), SwiGLU MLP, MoE.

Parameter names equal the hub checkpoint's (``self_attn.q_proj``, ``self_attn.attention_sink_bias``,
``mlp.gate.weight``, ``mlp.gate.e_score_correction_bias``, ...), except the routed experts, which
are stacked into ``mlp.experts.gate_up_proj [E, 2I, D]`` and ``mlp.experts.down_proj [E, D, I]``
(the checkpoint loader maps the per-expert hub tensors onto them).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mimo.config import MiMoConfig
from mimo.ops.attention import attention
from mimo.ops.moe import experts_forward, route
from mimo.ops.norm import rms_norm
from mimo.ops.rope import apply_partial_rope


class KVCache(Protocol):
    """What attention needs from a cache: store this step's K/V, hand back everything visible.

    ``update`` returns keys, values and each key slot's absolute position (``-1`` for an empty
    slot) so the mask can be rebuilt from positions alone.
    """

    def update(
        self, layer: object, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, config: MiMoConfig, kind: str) -> None:
        super().__init__()
        d = config.hidden_size
        self.kind = kind
        self.n_heads = config.num_heads(kind)
        self.n_kv = config.num_kv_heads(kind)
        self.qk_dim = config.qk_head_dim(kind)
        self.v_dim = config.v_dim(kind)
        self.window = config.window(kind)
        self.scale = self.qk_dim**-0.5  # the q/k head dim (192), not v's
        self.v_scale = config.attention_value_scale
        self.q_proj = nn.Linear(d, self.n_heads * self.qk_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.qk_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.v_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.v_dim, d, bias=False)
        if config.has_sinks(kind):
            self.attention_sink_bias = nn.Parameter(torch.zeros(self.n_heads))
        else:
            self.register_parameter("attention_sink_bias", None)
        self.backend = "reference"

    def forward(
        self,
        x: torch.Tensor,  # [B, T, D]
        positions: torch.Tensor,  # [B, T]
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache | None = None,
        cache_key: object = None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.qk_dim).transpose(1, 2)  # [B, Hq, T, Dqk]
        k = self.k_proj(x).view(b, t, self.n_kv, self.qk_dim).transpose(1, 2)  # [B, Hkv, T, Dqk]
        # The value scale is applied before caching, as in transformers (same result as scaling the output).
        v = self.v_proj(x).view(b, t, self.n_kv, self.v_dim).transpose(1, 2) * self.v_scale  # [B, Hkv, T, Dv]
        cos, sin = rope
        q = apply_partial_rope(q, cos, sin)
        k = apply_partial_rope(k, cos, sin)
        if cache is not None:
            k, v, k_pos = cache.update(cache_key, k, v, positions)
        else:
            k_pos = positions
        o = attention(q, k, v, positions, k_pos, self.window, self.scale, self.attention_sink_bias, self.backend)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, self.n_heads * self.v_dim))


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """``mlp.gate``: fp32 router weight and the selection-only balancing bias (a buffer: updated by rule, not SGD)."""

    def __init__(self, config: MiMoConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(config.n_routed_experts, config.hidden_size, dtype=torch.float32))
        self.register_buffer("e_score_correction_bias", torch.zeros(config.n_routed_experts, dtype=torch.float32))


class Experts(nn.Module):
    def __init__(self, config: MiMoConfig) -> None:
        super().__init__()
        e, i, d = config.n_routed_experts, config.moe_intermediate_size, config.hidden_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, d))
        self.down_proj = nn.Parameter(torch.empty(e, d, i))


class MoE(nn.Module):
    def __init__(self, config: MiMoConfig) -> None:
        super().__init__()
        self.config = config
        self.gate = Router(config)
        self.experts = Experts(config)

    def forward(self, x: torch.Tensor, router_out: list | None = None) -> torch.Tensor:
        c = self.config
        shape = x.shape
        x_TD = x.reshape(-1, shape[-1])
        scores_TE, weights_TK, experts_TK = route(
            x_TD, self.gate.weight, self.gate.e_score_correction_bias, c.num_experts_per_tok,
            c.n_group, c.topk_group, c.norm_topk_prob, c.routed_scaling_factor,
        )
        if router_out is not None:
            router_out.append((scores_TE, experts_TK))
        y = experts_forward(x_TD, self.experts.gate_up_proj, self.experts.down_proj, weights_TK, experts_TK)
        return y.view(shape)
