"""The whole network: embedding, hybrid decoder stack, final norm, untied lm_head, MTP blocks (paper §2; the MTP blocks, §2.3).

One code path serves training, prefill, decode and speculative verification: callers pass
token ids with explicit positions and, optionally, a KV cache. Logits are a separate step
(:meth:`CausalLM.compute_logits`) so callers compute them only where needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from mimo.config import FULL, SLIDING, MiMoConfig
from mimo.model.decoder import DecoderLayer
from mimo.model.layers import MLP, Attention, Experts, KVCache, Linear, RMSNorm, Router
from mimo.model.mtp import MTPBlock, mtp_shift
from mimo.ops.attention import check_backend
from mimo.ops.rope import Rope, inv_freq, rope_tables, rotate_half_perm


@dataclass
class CausalLMOutput:
    logits: torch.Tensor | None  # [B, T, V]
    hidden_states: torch.Tensor  # [B, T, D] after model.norm: h^(0), the MTP chain's start


class RotaryTables(nn.Module):
    """Inverse frequencies per attention kind (not saved: derived from the config)."""

    def __init__(self, config: MiMoConfig) -> None:
        super().__init__()
        self.config = config
        self.head_dims = {FULL: config.qk_head_dim(FULL), SLIDING: config.qk_head_dim(SLIDING)}
        for kind, name in ((FULL, "full"), (SLIDING, "sliding")):
            self.register_buffer(name, inv_freq(config.rotary_dim(kind), config.theta(kind)), persistent=False)
            perm = rotate_half_perm(config.rotary_dim(kind), self.head_dims[kind])
            self.register_buffer(name + "_perm", perm, persistent=False)

    @torch.no_grad()
    def reset(self) -> None:
        """Recompute the buffers where they are (after ``to_empty``, their memory holds garbage)."""
        for kind, name in ((FULL, "full"), (SLIDING, "sliding")):
            buf = getattr(self, name)
            buf.copy_(inv_freq(self.config.rotary_dim(kind), self.config.theta(kind), device=buf.device))
            perm = getattr(self, name + "_perm")
            perm.copy_(rotate_half_perm(self.config.rotary_dim(kind), self.head_dims[kind], device=perm.device))

    def table(self, positions: torch.Tensor, dtype: torch.dtype, kind: str) -> Rope:
        name = "full" if kind == FULL else "sliding"
        return rope_tables(positions, getattr(self, name), self.head_dims[kind], getattr(self, name + "_perm"), dtype)

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> dict[str, Rope]:
        """One :class:`Rope` per attention kind, shared by every layer of that kind in a forward."""
        return {kind: self.table(positions, dtype, kind) for kind in (FULL, SLIDING)}


class Backbone(nn.Module):
    """``model.*`` in the checkpoint."""

    def __init__(self, config: MiMoConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mtp = nn.Module()
        self.mtp.layers = nn.ModuleList(MTPBlock(config, i) for i in range(config.num_mtp_layers))


class CausalLM(nn.Module):
    def __init__(self, config: MiMoConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        self.rotary = RotaryTables(config)
        self.compute_dtype: torch.dtype | None = None  # see set_compute_dtype
        self.parallel = None  # the group a parallel plan split this model over (mimo.parallel), else None

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype: the compute dtype if one was set (:meth:`set_compute_dtype`), else the
        embedding's. Weights held narrower (bf16, FP8) are read into it."""
        return self.compute_dtype or self.model.embed_tokens.weight.dtype

    def kv_heads(self) -> dict[str, int]:
        """KV heads per attention kind that this model holds (all, or a tensor-parallel rank's share)."""
        out: dict[str, int] = {}
        for m in self.modules():
            if isinstance(m, Attention):
                out.setdefault(m.kind, m.n_kv)
        return out

    def set_compute_dtype(self, dtype: torch.dtype | None) -> None:
        """Carry activations (hidden states, logits, the engine's KV cache) in ``dtype`` whatever dtype the
        weights are held in; None: in the embedding's dtype. float32 activations over bf16 or FP8 weights is
        what the engine does on a CPU: decode reads the same weight bytes, and a decode step and a speculative
        verify of the same tokens then agree to fp32 rounding, not bf16's (greedy outputs stay identical)."""
        if dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"compute dtype must be float32, bfloat16 or float16, got {dtype}")
        self.compute_dtype = dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    # ------------------------------------------------------------------ forward pieces
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():  # the compiled decode's ids come from the engine, checked on entry
            if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
                raise ValueError(
                    f"token ids must be in [0, {self.config.vocab_size}); got range "
                    f"[{int(input_ids.min())}, {int(input_ids.max())}]"
                )
        x = self.model.embed_tokens(input_ids)
        return x if x.dtype == self.dtype else x.to(self.dtype)

    def trunk(
        self,
        input_ids: torch.Tensor,  # [B, T]
        positions: torch.Tensor | None = None,  # [B, T]; default 0..T-1
        cache: KVCache | None = None,
        router_out: list | None = None,
        replay: Mapping[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Hidden states after ``model.norm`` [B, T, D].

        ``router_out`` collects each MoE layer's ``(scores_TE, experts_TK)`` in layer order. ``replay`` maps a
        decoder-layer index to the experts [B, T, K] that layer's MoE uses instead of routing: rollout routing
        replay (R3), so a trainer's forward runs the experts the inference engine chose (layers not in it
        route as usual). Both are arguments, not model state, so one model serves engine and trainer at once."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
        x = self.embed(input_ids)
        rope = self.rotary.tables(positions, x.dtype)
        masks: dict = {}  # one attention mask per kind, built by the kind's first layer
        for layer in self.model.layers:
            x = layer(x, positions, rope[layer.kind], cache, router_out, masks, replay)
        return self.model.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def mtp_block(
        self,
        depth: int,  # 1-based
        token_ids: torch.Tensor,  # [B, L] the tokens t[i+depth]
        chain: torch.Tensor,  # [B, L, D] h^(depth-1)[i]
        positions: torch.Tensor,  # [B, L] positions i
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """h^(depth) [B, L, D]; its logits predict t[i+depth+1]. Inputs aligned by :func:`mtp_shift`."""
        n = self.config.num_mtp_layers
        if not 1 <= depth <= n:
            raise ValueError(f"MTP depth {depth} is out of range: this model has {n} MTP block(s)")
        emb = self.embed(token_ids)
        rope = self.rotary.table(positions, emb.dtype, SLIDING)
        return self.model.mtp.layers[depth - 1](emb, chain, positions, rope, cache)

    def mtp_chain(self, token_ids: torch.Tensor, hidden: torch.Tensor, depths: int,
                  positions: torch.Tensor | None = None) -> list[torch.Tensor]:
        """h^(1) .. h^(depths) over whole sequences (training, evaluation), from the trunk's ``hidden`` [B, T, D].

        ``token_ids`` [B, T + extra] are the sequence with whatever future tokens the caller has: block k's
        row i needs t[i+k], so depth k has ``min(rows of h^(k-1), T + extra - k)`` rows, and row i of h^(k)
        predicts t[i+k+1]. ``positions`` [B, T] default to 0..T-1. Drafting in the engine feeds the blocks the
        same inputs, position by position (:func:`mimo.model.mtp.mtp_token_index`)."""
        if positions is None:
            positions = torch.arange(hidden.shape[1], device=hidden.device).expand(hidden.shape[0], -1)
        chains, chain = [], hidden
        for depth in range(1, depths + 1):
            toks, rows = mtp_shift(token_ids[:, : chain.shape[1] + depth], chain, depth)
            if toks.shape[1] == 0:
                break
            chain = self.mtp_block(depth, toks, rows, positions[:, : toks.shape[1]])
            chains.append(chain)
        return chains

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> CausalLMOutput:
        hidden = self.trunk(input_ids, positions, cache)
        return CausalLMOutput(logits=self.compute_logits(hidden), hidden_states=hidden)

    # ------------------------------------------------------------------ conveniences
    def set_attention_backend(self, backend: str) -> None:
        check_backend(backend)
        for m in self.modules():
            if isinstance(m, Attention):
                m.backend = backend

    def fuse_projections(self) -> None:
        """Inference transform: q/k/v and gate/up weights become views of one fused weight each, so each
        takes one matmul (parameters and state_dict are unchanged). A model whose weights require grad is
        refused: call ``requires_grad_(False)`` first. A weight replaced later falls back to its own matmul."""
        if any(p.requires_grad for p in self.parameters()):
            raise RuntimeError("fuse_projections is an inference transform and this model's weights require grad "
                               "(a fused model trains no q/k/v or gate/up weights): call model.requires_grad_(False) "
                               "first")
        for m in self.modules():
            if isinstance(m, Attention | MLP):
                m.fuse_projections()

    @torch.no_grad()
    def dequantize_(self, dtype: torch.dtype = torch.bfloat16) -> CausalLM:
        """Convert every weight held as FP8 to ``dtype``, in place, one tensor (one expert) at a time: e.g. to
        fine-tune a released checkpoint, or to save it unquantized. Fused projections are undone first."""
        self.unfuse_projections()
        for m in self.modules():
            if isinstance(m, Linear | Experts):
                m.dequantize_(dtype)
        return self

    def unfuse_projections(self) -> None:
        """Undo :meth:`fuse_projections` (each weight gets its own storage again), e.g. to train the model."""
        for m in self.modules():
            if isinstance(m, Attention | MLP):
                m.unfuse_projections()

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Random initialisation in place, on whatever device the weights are (normal, std = initializer_range;
        norms 1; sinks and router bias 0). A model built on the meta device: ``to_empty(device=...)`` first.
        Each device draws from its own generator seeded with ``seed``, so a shard initialises only itself."""
        gens: dict[torch.device, torch.Generator] = {}

        def normal(w: torch.Tensor) -> None:
            g = None
            if seed is not None:
                g = gens.get(w.device)
                if g is None:
                    g = gens[w.device] = torch.Generator(device=w.device).manual_seed(seed)
            w.normal_(0.0, self.config.initializer_range, generator=g)

        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                normal(m.weight)
            elif isinstance(m, RMSNorm):
                m.weight.fill_(1.0)
            elif isinstance(m, Experts):
                for w in (m.gate_proj, m.up_proj, m.down_proj):
                    normal(w)
            elif isinstance(m, Router):
                normal(m.weight)
                m.e_score_correction_bias.zero_()
            elif isinstance(m, RotaryTables):
                m.reset()  # derived buffers: garbage after to_empty
            if isinstance(m, Attention) and m.attention_sink_bias is not None:
                m.attention_sink_bias.zero_()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
