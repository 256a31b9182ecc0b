"""Drafting with the MTP blocks: block k drafts depth k (paper §3.3, spec §3).

Alignment (see :func:`mimo.model.mtp_shift`): block k at position i reads token t[i+k] and the
chain state h^(k-1)[i]; its output predicts t[i+k+1]. With q the last position the trunk has
processed and t[q+1] the last sampled token, block 1 at q drafts t[q+2], block 2 at q (fed
that draft) drafts t[q+3], and so on.

Every MTP block keeps its own sliding-window KV cache, filled only from *committed* inputs.
Each step, block k first catches up over the positions whose inputs became committed since the
last step (``frontier[k-1] + 1 .. q-k+1``), then runs the k-1 positions that depend on this
step's drafts (``q-k+2 .. q``). Those draft-dependent cache entries are invalidated as soon as
the drafts are made, so a rejected draft never leaves a trace.
"""

from __future__ import annotations

import torch

from mimo.engine.kv_cache import HybridKVCache
from mimo.engine.sampler import filtered_probs, sample
from mimo.engine.sequence import ChainRows, Sequence
from mimo.model.causal_lm import CausalLM


@torch.no_grad()
def draft(model: CausalLM, cache: HybridKVCache, seqs: list[Sequence], k_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (draft ids [B, K], draft probs [B, K, V]); updates each sequence's chain and frontiers."""
    b = len(seqs)
    vocab = model.config.vocab_size
    drafts = torch.zeros(b, k_max, dtype=torch.long)
    probs = torch.zeros(b, k_max, vocab)
    q = [s.num_computed - 1 for s in seqs]
    pending: list[tuple[int, torch.Tensor] | None] = [None] * b  # block k-1's draft-dependent rows (start, rows)
    slots = [s.slot for s in seqs]
    for k in range(1, k_max + 1):
        ids, chains, poss, spans = [], [], [], []
        for j, s in enumerate(seqs):
            lo, hi = s.frontier[k - 1] + 1, q[j]
            commit_end = q[j] - k + 1
            toks = [_token(s, i + k) if i + k <= q[j] + 1 else int(drafts[j, i + k - q[j] - 2]) for i in range(lo, hi + 1)]
            known_end = min(hi, s.chain[k - 1].end() - 1)
            parts = [s.chain[k - 1].get(range(lo, known_end + 1))] if known_end >= lo else []
            if known_end < hi:
                start, rows = pending[j]  # type: ignore[misc]
                parts.append(rows[known_end + 1 - start : hi + 1 - start])
            ids.append(toks)
            chains.append(torch.cat(parts, dim=0))
            poss.append(list(range(lo, hi + 1)))
            spans.append((lo, hi, commit_end))
        width = max(len(t) for t in ids)
        ids_t = torch.zeros(b, width, dtype=torch.long)
        pos_t = torch.full((b, width), -1, dtype=torch.long)
        chain_t = torch.zeros(b, width, chains[0].shape[-1], dtype=chains[0].dtype)
        for j in range(b):
            n = len(ids[j])
            ids_t[j, :n] = torch.tensor(ids[j])
            pos_t[j, :n] = torch.tensor(poss[j])
            chain_t[j, :n] = chains[j]
        out = model.mtp_block(k, ids_t, chain_t, pos_t, cache.bind(slots))  # [B, W, D]
        last = []
        for j, s in enumerate(seqs):
            lo, hi, commit_end = spans[j]
            n_commit = max(0, commit_end - lo + 1)
            if n_commit:
                if k < k_max:
                    s.chain[k].append(lo, out[j, :n_commit])
                s.frontier[k - 1] = commit_end
                s.chain[k - 1].drop_through(commit_end)
            pending[j] = (lo + n_commit, out[j, n_commit : hi - lo + 1])
            last.append(out[j, hi - lo])
            cache.truncate_one(("mtp", k - 1), s.slot, s.frontier[k - 1] + 1)
        logits = model.compute_logits(torch.stack(last))  # [B, V]
        p = filtered_probs(logits, [s.params for s in seqs])
        drafts[:, k - 1] = sample(p, [s.generator for s in seqs])
        probs[:, k - 1] = p
    return drafts, probs


def _token(seq: Sequence, index: int) -> int:
    """Committed token ``index`` of prompt + output, without concatenating the two lists."""
    n = len(seq.prompt_ids)
    return seq.prompt_ids[index] if index < n else seq.output_ids[index - n]


def start_chain(seq: Sequence, hidden: torch.Tensor, first_pos: int, k_max: int) -> None:
    """After prefill: trunk states for positions first_pos.. start the chain; no block has run yet."""
    seq.chain = [ChainRows() for _ in range(k_max)]
    seq.chain[0].append(first_pos, hidden)
    seq.frontier = [first_pos - 1] * k_max
