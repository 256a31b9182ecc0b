"""Parameter and KV-cache arithmetic from a config alone (paper Table 1's shapes): no weights needed.

``tests/unit/test_cli_info.py`` pins these formulas to the real module tree's parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass

from mimo.config import FULL, SLIDING, MiMoConfig


@dataclass(frozen=True)
class ParamCounts:
    total: int  # main model (embedding, layers, norm, lm_head), no MTP
    active: int  # per token: all but the unchosen routed experts, embedding and lm_head included
    active_no_embedding: int  # active minus the embedding row table (lm_head kept: every token computes it)
    active_no_embedding_or_head: int
    embedding: int
    lm_head: int
    attention: int
    ffn: int
    routed_experts: int
    per_expert: int  # one routed expert (gate, up, down)
    per_mtp_block: int
    mtp_blocks: int  # all MTP blocks together

    @property
    def total_with_mtp(self) -> int:
        return self.total + self.mtp_blocks


def _attention_params(c: MiMoConfig, kind: str) -> int:
    d, h, kv = c.hidden_size, c.num_heads(kind), c.num_kv_heads(kind)
    qk, v = c.qk_head_dim(kind), c.v_dim(kind)
    sinks = h if c.has_sinks(kind) else 0
    return d * h * qk + d * kv * qk + d * kv * v + h * v * d + sinks


def parameter_counts(c: MiMoConfig) -> ParamCounts:
    d = c.hidden_size
    dense = 3 * d * c.intermediate_size
    expert = 3 * d * c.moe_intermediate_size
    router = c.n_routed_experts * d  # the balancing bias is a buffer, not a parameter
    attn = sum(_attention_params(c, t) for t in c.layer_types)
    n_moe = len(c.moe_layers)
    n_dense = c.num_hidden_layers - n_moe
    routed = n_moe * c.n_routed_experts * expert
    ffn = n_dense * dense + routed + n_moe * router
    norms = 2 * d * c.num_hidden_layers + d
    emb = head = c.vocab_size * d
    total = emb + head + attn + ffn + norms
    active_ffn = n_dense * dense + n_moe * (c.num_experts_per_tok * expert + router)
    active_core = attn + active_ffn + norms
    mtp = 2 * d + 2 * d * d + _attention_params(c, SLIDING) + 2 * d + dense + d
    return ParamCounts(
        total=total,
        active=active_core + emb + head,
        active_no_embedding=active_core + head,
        active_no_embedding_or_head=active_core,
        embedding=emb,
        lm_head=head,
        attention=attn,
        ffn=ffn,
        routed_experts=routed,
        per_expert=expert,
        per_mtp_block=mtp,
        mtp_blocks=mtp * c.num_mtp_layers,
    )


@dataclass(frozen=True)
class KVSizes:
    bytes_per_token_full: int  # all full-attention layers, per token of context (grows with the context)
    bytes_per_token_sliding: int  # all sliding layers, per token kept (bounded by the window)
    bytes_per_token_mtp: int  # all MTP blocks (sliding), per token kept
    full_layers: int
    sliding_layers: int
    window: int

    def total_bytes(self, context: int, lookahead: int = 0) -> int:
        """Cache bytes for one sequence of ``context`` tokens with hybrid (window-bounded) sliding layers."""
        kept = min(context, self.window + lookahead)
        return self.bytes_per_token_full * context + (self.bytes_per_token_sliding + self.bytes_per_token_mtp) * kept

    def total_bytes_all_full(self, context: int) -> int:
        """The same stack if every layer kept the whole context (what hybrid attention saves against)."""
        return (self.bytes_per_token_full + self.bytes_per_token_sliding + self.bytes_per_token_mtp) * context


def kv_sizes(c: MiMoConfig, dtype_bytes: int = 2) -> KVSizes:
    n_full = sum(t == FULL for t in c.layer_types)
    n_slide = c.num_hidden_layers - n_full
    return KVSizes(
        bytes_per_token_full=n_full * c.kv_values_per_token(FULL) * dtype_bytes,
        bytes_per_token_sliding=n_slide * c.kv_values_per_token(SLIDING) * dtype_bytes,
        bytes_per_token_mtp=c.num_mtp_layers * c.kv_values_per_token(SLIDING) * dtype_bytes,
        full_layers=n_full,
        sliding_layers=n_slide,
        window=c.sliding_window,
    )


# ---------------------------------------------------------------------------- weights read per step
# Decode is memory-bound: a step's time is about the bytes of weight it reads. A forward over n
# tokens (a batch-n decode step, or a speculative verify of k+1 tokens) reads every non-expert
# weight once, the lm_head once, and the *union* of the experts its tokens chose.


def experts_touched(c: MiMoConfig, tokens: int) -> float:
    """Expected distinct experts per MoE layer chosen by ``tokens`` tokens, if routing were
    independent per token: E * (1 - (1 - K/E)^n). Real routing is correlated, so this is an upper
    estimate for consecutive tokens of one sequence."""
    e, k = c.n_routed_experts, c.num_experts_per_tok
    return e * (1 - (1 - k / e) ** tokens)


def params_read_per_step(c: MiMoConfig, tokens: int = 1) -> float:
    """Weights read by one trunk forward over ``tokens`` tokens plus the lm_head (embedding rows excluded)."""
    pc = parameter_counts(c)
    n_moe = len(c.moe_layers)
    extra = experts_touched(c, tokens) - c.num_experts_per_tok  # experts beyond one token's own
    return pc.active_no_embedding + n_moe * extra * pc.per_expert


def speculative_params_per_step(c: MiMoConfig, k: int) -> float:
    """Weights read by one batch-1 speculative step: k drafts (each an MTP block and the lm_head),
    then one verify forward over k + 1 tokens."""
    pc = parameter_counts(c)
    return k * (pc.per_mtp_block + pc.lm_head) + params_read_per_step(c, k + 1)


def speculative_bound_speedup(c: MiMoConfig, k: int, acceptance_length: float) -> float:
    """Batch-1 decode speed-up of k-token speculation at a bandwidth bound: tokens per byte read,
    against plain decode's one token per step."""
    return acceptance_length * params_read_per_step(c, 1) / speculative_params_per_step(c, k)
