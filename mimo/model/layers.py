"""Modules of one decoder layer: RMSNorm, attention (GQA, partial RoPE, value scale, sinks), SwiGLU MLP, MoE.

Parameter names equal the hub checkpoint's (``self_attn.q_proj``, ``self_attn.attention_sink_bias``,
``mlp.gate.weight``, ``mlp.gate.e_score_correction_bias``, ...), except the routed experts, which
are stacked per projection: ``mlp.experts.gate_proj [E, I, D]``, ``up_proj [E, I, D]``, ``down_proj [E, D, I]``
(the checkpoint loader maps the per-expert hub tensors onto them).

Single-device code that can be sharded from outside: head counts come from the weights' shapes, not the
config, so a module holding a slice of the heads (tensor parallelism) computes its slice; the routed
experts are one module (:class:`Experts`) called once per MoE layer with the routing, the one point where
a parallel plan swaps in expert parallelism.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mimo.config import MiMoConfig
from mimo.ops.attention import Visibility, attention
from mimo.ops.linear import linear
from mimo.ops.moe import experts_forward, route
from mimo.ops.norm import rms_norm
from mimo.ops.rope import Rope, apply_rope


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


def fuse_linears(*linears: nn.Linear) -> Fused:
    """Concatenate the weights of linears that read the same input into one tensor; each weight
    becomes a view of it, so one matmul computes all of them and no memory is duplicated."""
    fused = torch.cat([m.weight.detach() for m in linears], dim=0)
    offset = 0
    for m in linears:
        n = m.weight.shape[0]
        m.weight.data = fused[offset : offset + n]
        offset += n
    return Fused(fused, linears)


class Fused:
    """A fused weight: a plain tensor whose slices the member weights are. Autograd through it would never
    reach the member parameters, so using it where they need gradients raises instead of training nothing."""

    def __init__(self, weight: torch.Tensor, linears: tuple[nn.Linear, ...]) -> None:
        self.weight = weight
        self.linears = linears
        self.ptrs = [m.weight.data_ptr() for m in linears]

    def intact(self) -> bool:
        return [m.weight.data_ptr() for m in self.linears] == self.ptrs

    def usable(self) -> bool:
        if torch.is_grad_enabled() and any(m.weight.requires_grad for m in self.linears):
            raise RuntimeError("this model's projections are fused for inference, so autograd cannot reach q/k/v "
                               "or gate/up: call model.unfuse_projections() before training it")
        if torch.compiler.is_compiling():
            return True  # pointer checks would break the graph; the engine compiles after fusing
        return self.intact()

    def unfuse(self) -> None:
        """Give every member weight its own storage again."""
        for m in self.linears:
            m.weight.data = m.weight.data.clone()


class Attention(nn.Module):
    def __init__(self, config: MiMoConfig, kind: str) -> None:
        super().__init__()
        d = config.hidden_size
        self.kind = kind
        n_heads, n_kv = config.num_heads(kind), config.num_kv_heads(kind)  # all of them: a parallel plan slices
        self.qk_dim = config.qk_head_dim(kind)
        self.v_dim = config.v_dim(kind)
        self.window = config.window(kind)
        self.scale = self.qk_dim**-0.5  # the q/k head dim (192), not v's
        self.v_scale = config.attention_value_scale
        self.q_proj = nn.Linear(d, n_heads * self.qk_dim, bias=False)
        self.k_proj = nn.Linear(d, n_kv * self.qk_dim, bias=False)
        self.v_proj = nn.Linear(d, n_kv * self.v_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.v_dim, d, bias=False)
        if config.has_sinks(kind):
            self.attention_sink_bias = nn.Parameter(torch.zeros(n_heads))
        else:
            self.register_parameter("attention_sink_bias", None)
        self.backend = "reference"
        self.qkv: Fused | None = None

    @property
    def n_heads(self) -> int:
        """The query heads this module holds, read from its weight (all, or a tensor-parallel slice)."""
        return self.q_proj.weight.shape[0] // self.qk_dim

    @property
    def n_kv(self) -> int:
        return self.k_proj.weight.shape[0] // self.qk_dim

    def fuse_projections(self) -> None:
        if self.qkv is None or not self.qkv.intact():
            self.qkv = fuse_linears(self.q_proj, self.k_proj, self.v_proj)

    def unfuse_projections(self) -> None:
        if self.qkv is not None:
            self.qkv.unfuse()
            self.qkv = None

    def forward(
        self,
        x: torch.Tensor,  # [B, T, D]
        positions: torch.Tensor,  # [B, T]
        rope: Rope,
        cache: KVCache | None = None,
        cache_key: object = None,
        masks: dict | None = None,  # this forward's Visibility per attention kind, shared by its layers
    ) -> torch.Tensor:
        b, t, _ = x.shape
        hq, hkv = self.n_heads, self.n_kv
        if self.qkv is not None and self.qkv.usable():
            qkv = linear(x, self.qkv.weight)
            n_qk = (hq + hkv) * self.qk_dim
            qk = apply_rope(qkv[..., :n_qk].view(b, t, hq + hkv, self.qk_dim), rope)  # one RoPE for q and k
            q, k = qk[:, :, :hq], qk[:, :, hq:]
            v = qkv[..., n_qk:].view(b, t, hkv, self.v_dim)
        else:
            q = apply_rope(self.q_proj(x).view(b, t, hq, self.qk_dim), rope)
            k = apply_rope(self.k_proj(x).view(b, t, hkv, self.qk_dim), rope)
            v = self.v_proj(x).view(b, t, hkv, self.v_dim)
        if self.v_scale != 1.0:
            # Applied before caching, as in transformers (same result as scaling the output).
            v = v * self.v_scale
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, Dh]
        if cache is not None:
            k, v, k_pos = cache.update(cache_key, k, v, positions)
        else:
            k_pos = positions
        vis = masks.get(self.kind) if masks is not None else None
        if vis is None:
            vis = Visibility(positions, k_pos, self.window)
            if masks is not None:
                masks[self.kind] = vis
        o = attention(q, k, v, vis, self.scale, self.attention_sink_bias, self.backend)
        return linear(o.transpose(1, 2).reshape(b, t, hq * self.v_dim), self.o_proj.weight)  # [B, T, D]


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.gate_up: Fused | None = None

    def fuse_projections(self) -> None:
        if self.gate_up is None or not self.gate_up.intact():
            self.gate_up = fuse_linears(self.gate_proj, self.up_proj)

    def unfuse_projections(self) -> None:
        if self.gate_up is not None:
            self.gate_up.unfuse()
            self.gate_up = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None and self.gate_up.usable():
            gate, up = linear(x, self.gate_up.weight).chunk(2, dim=-1)
            return linear(F.silu(gate) * up, self.down_proj.weight)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """``mlp.gate``: fp32 router weight and the selection-only balancing bias (a buffer: updated by rule, not SGD)."""

    def __init__(self, config: MiMoConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(config.n_routed_experts, config.hidden_size, dtype=torch.float32))
        self.register_buffer("e_score_correction_bias", torch.zeros(config.n_routed_experts, dtype=torch.float32))


class Experts(nn.Module):
    """The routed experts of one MoE layer, and its dispatch point: ``forward(x, weights, experts)`` sends each
    token to its chosen experts and combines their outputs. Each projection is one stacked tensor, shardable
    on the expert dim (expert parallelism) or the intermediate dim (tensor parallelism) from outside."""

    def __init__(self, config: MiMoConfig) -> None:
        super().__init__()
        e, i, d = config.n_routed_experts, config.moe_intermediate_size, config.hidden_size
        self.gate_proj = nn.Parameter(torch.empty(e, i, d))
        self.up_proj = nn.Parameter(torch.empty(e, i, d))
        self.down_proj = nn.Parameter(torch.empty(e, d, i))

    def forward(self, x_TD: torch.Tensor, weights_TK: torch.Tensor, experts_TK: torch.Tensor) -> torch.Tensor:
        return experts_forward(x_TD, self.gate_proj, self.up_proj, self.down_proj, weights_TK, experts_TK)


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
        return self.experts(x_TD, weights_TK, experts_TK).view(shape)
