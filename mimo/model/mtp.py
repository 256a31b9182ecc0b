"""Multi-token-prediction blocks (paper §2.3): ``model.mtp.layers.{0,1,2}``, three blocks with their own weights.

Block k (1-based depth) at sequence position i reads the embedding of token t[i+k] and the
chain state h^(k-1)[i], and its logits (through the shared lm_head) predict t[i+k+1]:

    z = eh_proj(cat[enorm(embed(t[i+k])), hnorm(h^(k-1)[i])])      # embedding first
    z = z + self_attn(input_layernorm(z))                           # sliding window + sinks, swa rope theta
    z = z + mlp(pre_mlp_layernorm(z))                               # dense SwiGLU
    h^(k)[i] = final_layernorm(z)

Which hidden state feeds block k is an open point of the spec (§3.2): vLLM chains normed
states, SGLang's multi-layer EAGLE chains pre-norm residuals. We take the Megatron-core
convention that Xiaomi trained with: h^(0) is the main model's output *after* ``model.norm``
(what the lm_head sees) and h^(k) is block k's output *after* its ``final_layernorm``.
:func:`mtp_shift` is the single place that encodes this alignment; training and the
speculative decoder both call it.
"""

from __future__ import annotations

import torch
from torch import nn

from mimo.config import SLIDING, MiMoConfig
from mimo.model.layers import MLP, Attention, KVCache, Linear, RMSNorm
from mimo.ops.rope import Rope


def mtp_token_index(position: int, depth: int) -> int:
    """The token block ``depth`` reads at sequence position ``position``: t[position + depth] (its logits then
    predict t[position + depth + 1]). :func:`mtp_shift` applies the same rule to whole sequences."""
    return position + depth


def mtp_shift(tokens: torch.Tensor, chain: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of MTP block ``depth`` (1-based) for rows 0 .. T-depth-1.

    tokens [B, T] are the sequence t[0..T-1]; chain [B, L, D] holds h^(depth-1)[i] in row i
    (L >= T - depth). Returns (token ids t[i+depth], chain rows h^(depth-1)[i]) for
    i = 0 .. T-depth-1; row i's output predicts t[i+depth+1], so the last row has no target
    inside the sequence (it is the one that drafts when decoding).
    """
    if depth < 1:
        raise ValueError(f"MTP depth is 1-based, got {depth}")
    n = tokens.shape[1] - depth
    if n <= 0:
        return tokens[:, :0], chain[:, :0]
    if chain.shape[1] < n:
        raise ValueError(f"chain has {chain.shape[1]} rows; depth {depth} over {tokens.shape[1]} tokens needs {n}")
    return tokens[:, mtp_token_index(0, depth) :], chain[:, :n]


class MTPBlock(nn.Module):
    def __init__(self, config: MiMoConfig, index: int) -> None:
        super().__init__()
        d, eps = config.hidden_size, config.rms_norm_eps
        self.index = index
        self.enorm = RMSNorm(d, eps)
        self.hnorm = RMSNorm(d, eps)
        self.eh_proj = Linear(2 * d, d)
        self.input_layernorm = RMSNorm(d, eps)
        self.self_attn = Attention(config, SLIDING)
        self.pre_mlp_layernorm = RMSNorm(d, eps)
        self.mlp = MLP(d, config.intermediate_size)
        self.final_layernorm = RMSNorm(d, eps)

    def forward(
        self,
        emb: torch.Tensor,  # [B, L, D] embeddings of the tokens t[i+k]
        chain: torch.Tensor,  # [B, L, D] h^(k-1)[i]
        positions: torch.Tensor,  # [B, L] positions i
        rope: Rope,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        z = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(chain)], dim=-1))
        z = z + self.self_attn(self.input_layernorm(z), positions, rope, cache, ("mtp", self.index))
        z = z + self.mlp(self.pre_mlp_layernorm(z))
        return self.final_layernorm(z)
