"""The parallel plan: which parameter is split how over a group of ``n`` ranks, applied to a model built on the
meta device before its weights are loaded, so that each rank reads only its slices.

Tensor parallelism (the rules vLLM and SGLang use for this architecture; ``mimo info --plan`` counts bytes
with the same rules):

| parameter | split |
|---|---|
| ``q_proj`` | rows, by query head (``n`` must divide the heads: 64 in the release) |
| ``k_proj``, ``v_proj`` | rows, by KV head, never splitting one: more ranks than heads hold each on ``n / kv`` ranks (*) |
| ``attention_sink_bias`` | by query head |
| ``o_proj`` | columns, by query head: a partial sum, all-reduced (:class:`RowParallelLinear`) |
| dense ``gate_proj``/``up_proj``, ``down_proj`` | rows / columns of the intermediate size, all-reduced |
| ``embed_tokens``, ``lm_head`` | rows, by vocabulary (all-reduce / all-gather) |
| routed experts | EP: whole experts, ``E / n`` per rank; TP only: every expert's intermediate rows |
| router, norms, MTP ``eh_proj`` | replicated |

(*) The release's full-attention layers have 4 KV heads: each is held by 2 ranks at TP 8 and by 4 at TP 16 (their
KV cache is then stored that many times over the group); its sliding-window layers have 8: split at TP 8, each
held by 2 ranks at TP 16. ``n`` must divide the KV heads or be a multiple of them.

The three MTP blocks are split like the trunk's sliding-window layers (attention and a dense MLP).
"""

from __future__ import annotations

import torch
from torch import nn

from mimo.checkpoint.slices import Slice
from mimo.model.causal_lm import CausalLM
from mimo.model.layers import MLP, Attention, Experts, MoE
from mimo.parallel.group import ParallelGroup
from mimo.parallel.layers import ParallelExperts, ParallelLMHead, RowParallelLinear, VocabParallelEmbedding, become


def check_plan(model: CausalLM, n: int, ep: bool, tp: bool = True) -> None:
    """Raise, naming the dimension, when ``n`` ranks cannot split this model."""
    cfg = model.config
    problems = []
    if tp and cfg.vocab_size % n:
        problems.append(f"the vocabulary ({cfg.vocab_size})")
    for attn in _attentions(model) if tp else []:
        hq, hkv = attn[1].n_heads, attn[1].n_kv
        if hq % n:
            problems.append(f"{attn[0]}'s {hq} query heads")
        if hkv % n and n % hkv:
            problems.append(f"{attn[0]}'s {hkv} KV heads (neither divides the other)")
    for name, m in model.named_modules():
        if tp and isinstance(m, MLP) and m.gate_proj.weight.shape[0] % n:
            problems.append(f"{name}'s intermediate size {m.gate_proj.weight.shape[0]}")
        if isinstance(m, Experts):
            e, i = m.gate_proj.shape[0], m.gate_proj.shape[1]
            if ep and e % n:
                problems.append(f"{name}'s {e} experts (expert parallelism)")
            if not ep and i % n:
                problems.append(f"{name}'s expert intermediate size {i} (use expert parallelism)")
    if problems:
        raise ValueError(f"{n} ranks cannot split " + "; ".join(dict.fromkeys(problems)))


def _attentions(model: CausalLM) -> list[tuple[str, Attention]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Attention)]


def _narrow(module: nn.Module, leaf: str, sl: Slice, stacked: bool = False) -> None:
    """Replace a meta parameter by one of its slice's shape (stacked experts: ``[experts held, *slice]``)."""
    t = getattr(module, leaf)
    full = tuple(t.shape[1:]) if stacked else tuple(t.shape)
    shape = sl.local_shape(full)
    if stacked:
        shape = (len(sl.experts) if sl.experts is not None else t.shape[0], *shape)
    setattr(module, leaf, nn.Parameter(torch.empty(shape, dtype=t.dtype, device="meta"), requires_grad=False))


def _rows(rank: int, n: int, total: int) -> Slice:
    per = total // n
    return Slice(0, rank * per, (rank + 1) * per)


def apply_plan(model: CausalLM, pg: ParallelGroup) -> dict[str, Slice]:
    """Turn ``model`` (built on the meta device, full size) into rank ``pg.rank``'s part and return the slice of
    the checkpoint every split parameter holds; pass it to the loader (``from_pretrained(..., shard=...)``)."""
    n, r = pg.size, pg.rank
    if n == 1:
        return {}
    if any(not p.is_meta for p in model.parameters()):
        raise ValueError("apply_plan splits a model built on the meta device, before loading: load it with "
                         "from_pretrained(..., shard=ParallelGroup(...)) instead")
    check_plan(model, n, pg.ep, pg.tp)
    slices: dict[str, Slice] = {}

    def split(prefix: str, module: nn.Module, leaf: str, sl: Slice, stacked: bool = False) -> None:
        _narrow(module, leaf, sl, stacked)
        slices[f"{prefix}.{leaf}" if prefix else leaf] = sl

    if pg.tp:
        _split_dense(model, pg, split)
    for name, m in model.named_modules():
        if isinstance(m, MoE):
            ex = m.experts
            prefix = f"{name}.experts"
            if pg.ep:
                mine = _rows(r, n, ex.gate_proj.shape[0])
                for leaf in Experts.PROJECTIONS:
                    split(prefix, ex, leaf, Slice(experts=range(mine.start, mine.stop)), stacked=True)
                become(ex, ParallelExperts, group=pg, first=mine.start, all_to_all_from=pg.all_to_all_from)
            else:
                inter = _rows(r, n, ex.gate_proj.shape[1])
                split(prefix, ex, "gate_proj", inter, stacked=True)
                split(prefix, ex, "up_proj", inter, stacked=True)
                split(prefix, ex, "down_proj", Slice(1, inter.start, inter.stop), stacked=True)
                become(ex, ParallelExperts, group=pg, first=None)
    model.parallel = pg
    return slices


def _split_dense(model: CausalLM, pg: ParallelGroup, split) -> None:
    """Tensor parallelism for everything but the routed experts: vocabulary, attention, dense MLPs."""
    n, r = pg.size, pg.rank
    vocab = _rows(r, n, model.config.vocab_size)
    split("model.embed_tokens", model.model.embed_tokens, "weight", vocab)
    become(model.model.embed_tokens, VocabParallelEmbedding, group=pg, vocab_start=vocab.start)
    split("lm_head", model.lm_head, "weight", vocab)
    become(model.lm_head, ParallelLMHead, group=pg)

    for name, attn in _attentions(model):
        hq, hkv, dk, dv = attn.n_heads, attn.n_kv, attn.qk_dim, attn.v_dim
        q = _rows(r, n, hq)  # this rank's query heads
        kv_heads = range(r * hkv // n, (r + 1) * hkv // n) if hkv >= n else range(r // (n // hkv), r // (n // hkv) + 1)
        split(f"{name}.q_proj", attn.q_proj, "weight", Slice(0, q.start * dk, q.stop * dk))
        split(f"{name}.k_proj", attn.k_proj, "weight", Slice(0, kv_heads.start * dk, kv_heads.stop * dk))
        split(f"{name}.v_proj", attn.v_proj, "weight", Slice(0, kv_heads.start * dv, kv_heads.stop * dv))
        split(f"{name}.o_proj", attn.o_proj, "weight", Slice(1, q.start * dv, q.stop * dv))
        become(attn.o_proj, RowParallelLinear, group=pg)
        if attn.attention_sink_bias is not None:
            split(name, attn, "attention_sink_bias", q)

    for name, m in model.named_modules():
        if isinstance(m, MLP):
            inter = _rows(r, n, m.gate_proj.weight.shape[0])
            split(f"{name}.gate_proj", m.gate_proj, "weight", inter)
            split(f"{name}.up_proj", m.up_proj, "weight", inter)
            split(f"{name}.down_proj", m.down_proj, "weight", Slice(1, inter.start, inter.stop))
            become(m.down_proj, RowParallelLinear, group=pg)
