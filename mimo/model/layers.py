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
from mimo.ops.fp8 import BLOCK, FP8, dequantize, scale_rows
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


class Linear(nn.Linear):
    """A bias-free ``nn.Linear`` whose weight may be kept as stored in the release: FP8 e4m3 with its block
    scales (``weight_scale_inv``, a buffer saved under the hub's name) and, per row, the scale row it uses
    (``scale_row``, derived, not saved). :func:`mimo.ops.linear.linear` computes with either kind."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.register_buffer("weight_scale_inv", None)
        self.register_buffer("scale_row", None, persistent=False)
        self.block = (BLOCK, BLOCK)  # the checkpoint's weight_block_size (rows, cols)

    @property
    def is_fp8(self) -> bool:
        return self.weight.dtype == FP8

    def set_fp8(self, weight: torch.Tensor, scale: torch.Tensor, scale_row: torch.Tensor,
                block: tuple[int, int]) -> None:
        """Hold ``weight`` as FP8 with its scales (a frozen parameter: FP8 weights are not trained)."""
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.weight_scale_inv, self.scale_row, self.block = scale, scale_row, block

    @torch.no_grad()
    def dequantize_(self, dtype: torch.dtype) -> None:
        """Hold the weight in ``dtype`` instead of FP8 (a trainable parameter again)."""
        if self.is_fp8:
            w = dequantize(self.weight, self.weight_scale_inv, self.scale_row, self.block[1], dtype)
            self.weight = nn.Parameter(w)
            self.weight_scale_inv = self.scale_row = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.weight_scale_inv, self.scale_row, self.block[1])


def fuse_linears(*linears: Linear) -> Fused | None:
    """Concatenate the weights of linears that read the same input into one tensor; each weight becomes a
    view of it, so one matmul computes all of them and no memory is duplicated. FP8 members fuse with their
    scales (each keeps its own grid: the row index is shifted). None when the members' kinds differ."""
    fp8 = {m.is_fp8 for m in linears}
    if len(fp8) > 1 or len({m.weight.dtype for m in linears}) > 1 or (
            fp8 == {True} and len({m.block for m in linears}) > 1):
        return None
    fused = torch.cat([m.weight.detach() for m in linears], dim=0)
    scale = scale_row = None
    if fp8 == {True}:
        scale = torch.cat([m.weight_scale_inv for m in linears], dim=0)
        shifts = torch.tensor([0] + [m.weight_scale_inv.shape[0] for m in linears[:-1]]).cumsum(0).tolist()
        scale_row = torch.cat([m.scale_row + s for m, s in zip(linears, shifts)]).to(torch.int32)
    offset = 0
    for m in linears:
        n = m.weight.shape[0]
        m.weight.data = fused[offset : offset + n]
        offset += n
    return Fused(fused, linears, scale, scale_row, linears[0].block[1])


class Fused:
    """A fused weight: a plain tensor whose slices the member weights are (with the members' concatenated block
    scales when they are FP8). Autograd through it would never reach the member parameters, so using it where
    they need gradients raises instead of training nothing."""

    def __init__(self, weight: torch.Tensor, linears: tuple[Linear, ...], scale: torch.Tensor | None = None,
                 scale_row: torch.Tensor | None = None, block_cols: int = BLOCK) -> None:
        self.weight = weight
        self.linears = linears
        self.scale, self.scale_row, self.block_cols = scale, scale_row, block_cols
        self.ptrs = [m.weight.data_ptr() for m in linears]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.scale, self.scale_row, self.block_cols)

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
        self.q_proj = Linear(d, n_heads * self.qk_dim)
        self.k_proj = Linear(d, n_kv * self.qk_dim)
        self.v_proj = Linear(d, n_kv * self.v_dim)
        self.o_proj = Linear(n_heads * self.v_dim, d)
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
            qkv = self.qkv(x)
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
        return self.o_proj(o.transpose(1, 2).reshape(b, t, hq * self.v_dim))  # [B, T, D]


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, intermediate)
        self.up_proj = Linear(hidden, intermediate)
        self.down_proj = Linear(intermediate, hidden)
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
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
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
    on the expert dim (expert parallelism) or the intermediate dim (tensor parallelism) from outside. Kept as
    stored in the release, the projections are FP8 with per-expert block scales (``gate_proj_scale_inv``
    [E, rows/block, cols/block], ...)."""

    PROJECTIONS = ("gate_proj", "up_proj", "down_proj")

    def __init__(self, config: MiMoConfig) -> None:
        super().__init__()
        e, i, d = config.n_routed_experts, config.moe_intermediate_size, config.hidden_size
        self.gate_proj = nn.Parameter(torch.empty(e, i, d))
        self.up_proj = nn.Parameter(torch.empty(e, i, d))
        self.down_proj = nn.Parameter(torch.empty(e, d, i))
        for name in self.PROJECTIONS:
            self.register_buffer(f"{name}_scale_inv", None)
        self.block = (BLOCK, BLOCK)

    @property
    def is_fp8(self) -> bool:
        return self.gate_proj.dtype == FP8

    @torch.no_grad()
    def dequantize_(self, dtype: torch.dtype) -> None:
        """Hold the experts in ``dtype`` instead of FP8 (trainable parameters again)."""
        if not self.is_fp8:
            return
        for name in self.PROJECTIONS:
            w, scale = getattr(self, name), getattr(self, f"{name}_scale_inv")
            rows = scale_rows(w.shape[1], scale.shape[1], self.block[0], device=w.device)
            out = torch.empty(w.shape, dtype=dtype, device=w.device)
            for e in range(w.shape[0]):  # one expert at a time: never the layer in fp32 beside its FP8
                out[e] = dequantize(w[e], scale[e], rows, self.block[1], dtype)
            setattr(self, name, nn.Parameter(out))
            setattr(self, f"{name}_scale_inv", None)

    def forward(self, x_TD: torch.Tensor, weights_TK: torch.Tensor, experts_TK: torch.Tensor) -> torch.Tensor:
        scales = None
        if self.is_fp8:
            scales = (self.gate_proj_scale_inv, self.up_proj_scale_inv, self.down_proj_scale_inv)
        return experts_forward(x_TD, self.gate_proj, self.up_proj, self.down_proj, weights_TK, experts_TK,
                               scales, self.block)


class MoE(nn.Module):
    def __init__(self, config: MiMoConfig) -> None:
        super().__init__()
        self.config = config
        self.gate = Router(config)
        self.experts = Experts(config)

    def forward(self, x: torch.Tensor, router_out: list | None = None,
                experts: torch.Tensor | None = None) -> torch.Tensor:
        """``router_out`` collects ``(scores_TE, experts_TK)``; ``experts`` [..., K] (x's leading shape) replays
        a given expert choice instead of routing (R3, :func:`mimo.ops.moe.route`)."""
        c = self.config
        shape = x.shape
        x_TD = x.reshape(-1, shape[-1])
        scores_TE, weights_TK, experts_TK = route(
            x_TD, self.gate.weight, self.gate.e_score_correction_bias, c.num_experts_per_tok,
            c.n_group, c.topk_group, c.norm_topk_prob, c.routed_scaling_factor,
            None if experts is None else experts.reshape(-1, experts.shape[-1]).to(x.device, torch.long),
        )
        if router_out is not None:
            router_out.append((scores_TE, experts_TK))
        return self.experts(x_TD, weights_TK, experts_TK).view(shape)
