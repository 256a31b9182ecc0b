"""Token sampling for the inference engine: penalties, the filtered distribution, seeded draws, logprobs,
and speculative-decoding verification (rejection sampling).

Everything here is stateless and batched: row ``b`` of every tensor is one request with its own parameters
(1-D tensors or Python lists of length ``B``) and its own ``torch.Generator``. Only torch and the standard
library are imported.

Semantics follow vLLM (the engine's API is in vLLM's shape):

- ``apply_penalties``: the repetition penalty (CTRL, Keskar et al. 2019, as in vLLM/HF) divides positive and
  multiplies non-positive logits of every token seen in the prompt or output; presence and frequency penalties
  (OpenAI semantics) subtract ``presence * (count > 0) + frequency * count`` over output tokens only.
- ``processed_probs``: ``softmax(logits / T)``, then min-p, top-k, top-p, in vLLM v1's order (min-p is decided
  on the temperature-scaled full distribution; top-p on the distribution renormalised after min-p and top-k).
  ``T == 0`` means greedy: a one-hot at ``torch.argmax`` (ties -> lowest index).
- ``sample``: inverse-CDF sampling (what ``torch.multinomial`` does on CPU), batched: one float64 uniform per row
  from the row's own generator, then one float64 cumulative sum and ``searchsorted`` for the whole batch. On CPU
  this is ~3x cheaper than the exponential race (``argmax p / E``, vLLM's choice on GPU), which needs V random
  draws per row. A seeded request reproduces its tokens whatever else is in the batch.
- ``rejection_sample``: speculative sampling as in Leviathan et al. 2023, "Fast Inference from Transformers via
  Speculative Decoding" (Algorithm 1, Appendix A.1), and Chen et al. 2023, "Accelerating Large Language Model
  Decoding with Speculative Sampling" (Algorithm 2, Theorem 1): accept draft ``d`` with probability
  ``min(1, p(d) / q(d))``, else resample from ``norm(max(0, p - q))``; the emitted tokens are then distributed
  exactly as if sampled from the target ``p`` alone.

Randomness: ``generators`` is either one ``torch.Generator | None`` per row (per-request seeds; ``None`` rows share
the default generator in one batched draw) or a single ``torch.Generator``/``None`` for the whole batch (one
batched draw: fastest, but then a row's draws depend on the batch composition). Generators must live on the
device of the probabilities. Rows whose distribution is one-hot (greedy) never consume randomness.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["apply_penalties", "logprobs", "processed_probs", "rejection_sample", "sample"]

Generators = torch.Generator | Sequence[torch.Generator | None] | None
ParamT = torch.Tensor | Sequence[float] | Sequence[int]


# --------------------------------------------------------------------------------------------------- validation


def _check_2d(x: torch.Tensor, name: str) -> tuple[int, int]:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor [B, V], got {shape}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has an empty vocabulary dimension: shape {tuple(x.shape)}")
    return x.shape[0], x.shape[1]


def _param(x: ParamT, batch: int, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A per-row parameter as a 1-D tensor of length ``batch`` on ``device``."""
    t = torch.as_tensor(x, dtype=dtype, device=device)
    if t.dim() != 1 or t.shape[0] != batch:
        raise ValueError(f"{name} must have one value per row: expected shape [{batch}], got {tuple(t.shape)}")
    return t


def _bad(mask: torch.Tensor, values: torch.Tensor, name: str, rule: str) -> None:
    if bool(mask.any()):
        rows = mask.nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} must be {rule}; rows {rows} have {values[rows].tolist()}")


def _row_generators(generators: Generators, batch: int) -> Generators:
    if generators is None or isinstance(generators, torch.Generator):
        return generators
    gens = list(generators)
    if len(gens) != batch:
        raise ValueError(f"generators must have one entry per row: expected {batch}, got {len(gens)}")
    for i, g in enumerate(gens):
        if g is not None and not isinstance(g, torch.Generator):
            raise ValueError(f"generators[{i}] must be a torch.Generator or None, got {type(g).__name__}")
    return gens


def _uniforms(generators: Generators, rows: list[int], width: int, device: torch.device) -> torch.Tensor:
    """``[len(rows), width]`` float64 uniforms on [0, 1) for the given batch rows.

    Per-row generators are drawn one row at a time so a row's stream never depends on its neighbours; rows
    without a generator (and the single-generator form) are drawn in one batched call.
    """
    out = torch.empty(len(rows), width, dtype=torch.float64, device=device)
    if not rows or width == 0:
        return out
    if generators is None or isinstance(generators, torch.Generator):
        return out.uniform_(generator=generators)
    shared = [i for i, r in enumerate(rows) if generators[r] is None]
    if shared:
        out[shared] = torch.rand(len(shared), width, dtype=torch.float64, device=device)
    for i, r in enumerate(rows):
        g = generators[r]
        if g is not None:
            out[i].uniform_(generator=g)  # in place on the row view
    return out


def _categorical(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw per row: the token whose cumulative interval holds ``u * sum(w)``; ``[n, V], [n] -> [n]``.

    The cumulative sum is float64 so a tiny-probability token's interval keeps its width over 152k terms (float32
    rounding would be of the order of such probabilities). A zero-weight token has an empty interval, so it is never
    chosen: ``searchsorted(right=True)`` returns the first index whose cumulative sum exceeds the point.
    """
    cum = weights.double().cumsum(-1)  # [n, V]
    idx = torch.searchsorted(cum, (u * cum[:, -1])[:, None], right=True).squeeze(1)
    return idx.clamp_max(weights.shape[-1] - 1)  # u < 1 keeps the point below the total; clamp is belt and braces


def _flat_index(seqs: Sequence[Sequence[int]], vocab: int, device: torch.device, name: str) -> torch.Tensor:
    """Token ids of ``seqs`` as flat indices ``row * vocab + id`` into a ``[len(seqs), vocab]`` table."""
    lengths = torch.as_tensor([len(s) for s in seqs], dtype=torch.int64, device=device)
    toks = torch.as_tensor([t for s in seqs for t in s], dtype=torch.int64, device=device)
    if toks.numel():
        lo, hi = int(toks.min()), int(toks.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"{name} contains token id {lo if lo < 0 else hi} outside the vocabulary [0, {vocab})")
    rows = torch.repeat_interleave(torch.arange(len(seqs), device=device), lengths)
    return rows * vocab + toks


# --------------------------------------------------------------------------------------------------- penalties


def apply_penalties(
    logits: torch.Tensor,
    prompt_token_ids: Sequence[Sequence[int]],
    output_token_ids: Sequence[Sequence[int]],
    repetition_penalty: ParamT,
    presence_penalty: ParamT,
    frequency_penalty: ParamT,
) -> torch.Tensor:
    """Repetition, presence and frequency penalties (vLLM semantics); returns new logits, input untouched.

    ``repetition_penalty`` > 0 (1 = off, > 1 discourages) applies to tokens in prompt or output;
    ``presence_penalty`` and ``frequency_penalty`` (0 = off) to output tokens only. Rows with neutral values
    are not touched (and their token lists not even read).
    """
    batch, vocab = _check_2d(logits, "logits")
    for name, seqs in (("prompt_token_ids", prompt_token_ids), ("output_token_ids", output_token_ids)):
        if len(seqs) != batch:
            raise ValueError(f"{name} must have one list per row: expected {batch}, got {len(seqs)}")
    dev = logits.device
    rep = _param(repetition_penalty, batch, "repetition_penalty", torch.float32, dev)
    pres = _param(presence_penalty, batch, "presence_penalty", torch.float32, dev)
    freq = _param(frequency_penalty, batch, "frequency_penalty", torch.float32, dev)
    _bad(~(rep > 0) | ~rep.isfinite(), rep, "repetition_penalty", "finite and > 0 (1.0 = off)")
    _bad(~pres.isfinite(), pres, "presence_penalty", "finite (0.0 = off)")
    _bad(~freq.isfinite(), freq, "frequency_penalty", "finite (0.0 = off)")

    rep_rows = (rep != 1.0).nonzero().flatten()
    pf_rows = ((pres != 0.0) | (freq != 0.0)).nonzero().flatten()
    if rep_rows.numel() == 0 and pf_rows.numel() == 0:
        return logits
    # Work on the (few) seen token positions through flat indices rather than on dense [B, V] masks.
    logits = logits.clone(memory_format=torch.contiguous_format)
    flat = logits.view(-1)
    # vLLM order: repetition first (on the sign of the raw logit), then frequency and presence.
    if rep_rows.numel():
        rows = rep_rows.tolist()
        seqs = [list(prompt_token_ids[i]) + list(output_token_ids[i]) for i in rows]
        idx = torch.unique(_flat_index(seqs, vocab, dev, "prompt_token_ids/output_token_ids"))
        idx = rep_rows[idx // vocab] * vocab + idx % vocab  # [n, V] table -> batch rows
        r = rep[idx // vocab].to(flat.dtype)
        v = flat[idx]
        flat[idx] = torch.where(v > 0, v / r, v * r)
    if pf_rows.numel():
        idx, counts = torch.unique(
            _flat_index([output_token_ids[i] for i in pf_rows.tolist()], vocab, dev, "output_token_ids"),
            return_counts=True,
        )
        idx = pf_rows[idx // vocab] * vocab + idx % vocab
        row = idx // vocab
        flat[idx] -= freq[row].to(flat.dtype) * counts.to(flat.dtype) + pres[row].to(flat.dtype)
    return logits


# --------------------------------------------------------------------------------------------------- filtering


def processed_probs(
    logits: torch.Tensor,
    temperature: ParamT,
    top_k: ParamT,
    top_p: ParamT,
    min_p: ParamT,
) -> torch.Tensor:
    """The exact float32 distribution ``sample`` draws from, ``[B, V]``, each row summing to 1.

    Per row: ``temperature`` >= 0 (0 = greedy one-hot on ``torch.argmax(logits)``); ``top_k`` >= -1 (0 or -1 = off;
    values above V mean all); ``top_p`` in (0, 1] (1 = off): keep the smallest most-probable set whose mass is
    >= top_p, always at least the top token; ``min_p`` in [0, 1] (0 = off): keep tokens with p >= min_p * p_max.
    Filters run min-p, top-k, top-p (vLLM v1), each on the renormalised result of the previous one; ties at a
    top-k/top-p boundary keep the lower token id (as a stable sort would).
    """
    batch, vocab = _check_2d(logits, "logits")
    dev = logits.device
    temp = _param(temperature, batch, "temperature", torch.float32, dev)
    k = _param(top_k, batch, "top_k", torch.int64, dev)
    p_top = _param(top_p, batch, "top_p", torch.float32, dev)
    p_min = _param(min_p, batch, "min_p", torch.float32, dev)
    _bad(~(temp >= 0) | ~temp.isfinite(), temp, "temperature", "finite and >= 0 (0 = greedy)")
    _bad(k < -1, k, "top_k", ">= -1 (0 or -1 = off)")
    _bad(~((p_top > 0) & (p_top <= 1)), p_top, "top_p", "in (0, 1] (1.0 = off)")
    _bad(~((p_min >= 0) & (p_min <= 1)), p_min, "min_p", "in [0, 1] (0.0 = off)")

    x = logits.float()
    greedy = temp == 0
    out_greedy = torch.zeros(batch, vocab, dtype=torch.float32, device=dev)
    out_greedy.scatter_(1, x.argmax(-1, keepdim=True), 1.0)
    if bool(greedy.all()):
        return out_greedy

    # Greedy rows go through the maths with T = 1 and are overwritten at the end (keeps everything batched).
    probs = torch.softmax(x / torch.where(greedy, 1.0, temp)[:, None], dim=-1)  # [B, V]
    # Greedy rows must not turn a filter on (their filters are irrelevant) nor trip the sort below.
    use_k = (k > 0) & (k < vocab) & ~greedy
    use_p = (p_top < 1) & ~greedy
    use_min = (p_min > 0) & ~greedy

    if bool(use_min.any()):
        # min-p is a ratio to the max, so it needs no sort and is unchanged by any later renormalisation.
        p_max = probs.max(-1, keepdim=True).values
        probs = torch.where(use_min[:, None] & (probs < p_min[:, None] * p_max), 0.0, probs)

    rows = (use_k | use_p).nonzero().flatten()
    if rows.numel():
        sub = probs[rows]  # [n, V]
        keep = _top_k_top_p_mask(sub, torch.where(use_k, k, vocab)[rows], torch.where(use_p, p_top, 1.0)[rows])
        probs[rows] = torch.where(keep, sub, 0.0)

    probs = probs / probs.sum(-1, keepdim=True)
    return torch.where(greedy[:, None], out_greedy, probs)


# Top-p first looks at the best 1024 tokens, then the best 16384 (topk: ~15x and ~5x cheaper than sorting a 152k
# vocabulary on CPU), and sorts the whole row only when neither prefix holds top_p of the (renormalised) mass.
_TOP_P_PREFIXES = (1024, 16384)


def _top_values(probs: torch.Tensor, width: int) -> torch.Tensor:
    """The ``width`` largest values per row, descending (values only: unambiguous under ties)."""
    if width >= probs.shape[-1]:
        return probs.sort(dim=-1, descending=True).values
    return probs.topk(width, dim=-1).values


def _prefix_length(
    vals: torch.Tensor, k: torch.Tensor, top_p: torch.Tensor, total: torch.Tensor, vocab: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """How many of the most probable tokens top-k then top-p keep, from the sorted prefix ``vals [n, W]``.

    Returns ``(m [n], ok [n])``; ``ok`` is False where the prefix is too short to decide.
    """
    width = vals.shape[1]
    pos = torch.arange(width, device=vals.device)
    cum = torch.where(pos < k[:, None], vals, 0.0).cumsum(-1)  # [n, W], mass of the first k only
    # Top-p renormalises over what top-k kept (sum of the first k); with top-k off that is the whole row's mass,
    # taken from ``total`` so the answer does not depend on how long a prefix was sorted.
    norm = torch.where(k < vocab, cum[:, -1], total)
    before = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], dim=-1) / norm[:, None]  # mass before each token
    # Keep token i iff the mass strictly before it is < top_p: the smallest prefix reaching top_p. ``before`` is a
    # running sum of non-negatives, hence non-decreasing even in floating point, so the kept set is a prefix.
    m_p = (before < top_p[:, None]).sum(-1)  # >= 1: the top token always stays (before = 0 < top_p)
    m = torch.where(top_p < 1, torch.minimum(k, m_p), k)
    ok = (k <= width) | ((k >= vocab) & (m < width)) | (width >= vocab)
    return m, ok


def _top_k_top_p_mask(probs: torch.Tensor, k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Bool ``[n, V]``: the tokens top-k (``k``, V = off) then top-p (``top_p``, 1 = off) keep."""
    vocab = probs.shape[-1]
    k = k.clamp(1, vocab)
    total = probs.sum(-1)  # [n]
    width = int(k.max())
    for w in [w for w in _TOP_P_PREFIXES if w < width] + [width]:
        vals = _top_values(probs, w)
        m, ok = _prefix_length(vals, k, top_p, total, vocab)
        if bool(ok.all()):
            break
    assert bool(ok.all()), "the full width always decides"
    # Keep the first m tokens of the descending order, ties broken towards the lower id: everything above the
    # m-th value, plus the lowest-id tokens equal to it until m are kept. No scatter of a sorted copy needed.
    thr = vals.gather(1, (m - 1)[:, None])  # [n, 1]
    above = probs > thr
    tied = probs == thr
    need = m[:, None] - above.sum(-1, keepdim=True)
    return above | (tied & (tied.cumsum(-1) <= need))


# --------------------------------------------------------------------------------------------------- sampling


def sample(probs: torch.Tensor, generators: Generators = None) -> torch.Tensor:
    """One token id per row, int64 ``[B]``, drawn from ``probs`` (non-negative, need not be normalised).

    Rows with a single non-zero entry (greedy, or top_k = 1) return it without consuming randomness; every
    other row consumes exactly one float64 uniform from its generator (see the module docstring).
    """
    batch, _ = _check_2d(probs, "probs")
    gens = _row_generators(generators, batch)
    out = probs.argmax(-1)
    random_rows = ((probs > 0).sum(-1) > 1).nonzero().flatten()
    if random_rows.numel():
        u = _uniforms(gens, random_rows.tolist(), 1, probs.device)[:, 0]
        out[random_rows] = _categorical(probs[random_rows], u)
    return out


def logprobs(logits: torch.Tensor, token_ids: torch.Tensor, top_n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``log_softmax`` of the raw logits (vLLM's default: before penalties and temperature).

    Returns ``(token_logprob [B], top_ids [B, top_n] int64, top_logprobs [B, top_n])``, all float32 logprobs,
    top entries sorted descending.
    """
    batch, vocab = _check_2d(logits, "logits")
    ids = torch.as_tensor(token_ids, device=logits.device)
    if ids.shape != (batch,):
        raise ValueError(f"token_ids must have shape [{batch}], got {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"token_ids must be integers, got {ids.dtype}")
    if batch and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"token_ids must lie in [0, {vocab}), got {ids.tolist()[:8]}")
    if not 0 <= top_n <= vocab:
        raise ValueError(f"top_n must be in [0, {vocab}], got {top_n}")
    lp = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
    top_lp, top_ids = lp.topk(top_n, dim=-1)
    return lp.gather(1, ids.long()[:, None]).squeeze(1), top_ids, top_lp


# --------------------------------------------------------------------------------------------------- speculative


def rejection_sample(
    draft_ids: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    generators: Generators = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify K drafted tokens per row against the target model; returns ``(accepted_counts [B], output_ids)``.

    ``draft_ids [B, K]`` were sampled from ``draft_probs [B, K, V]`` (q); ``target_probs [B, K+1, V]`` (p) is the
    target distribution at each draft position plus the bonus position. Row b emits its first
    ``accepted_counts[b]`` drafts followed by exactly one more token (the residual resample at the first
    rejection, or the bonus token from p_K): ``output_ids [B, K+1]`` int64, padded with -1.

    Rows whose target is one-hot at every position (greedy) are exact and consume no randomness: accept while
    the draft equals the target argmax, then emit the target argmax. Every other row consumes K+1 float64 uniforms
    from its generator, whatever is accepted.
    """
    if not isinstance(draft_ids, torch.Tensor) or draft_ids.dim() != 2:
        raise ValueError(f"draft_ids must be a 2-D tensor [B, K], got {getattr(draft_ids, 'shape', draft_ids)}")
    batch, n_draft = draft_ids.shape
    if draft_ids.dtype.is_floating_point or draft_ids.dtype == torch.bool:
        raise ValueError(f"draft_ids must be integers, got {draft_ids.dtype}")
    if target_probs.dim() != 3 or target_probs.shape[:2] != (batch, n_draft + 1) or target_probs.shape[2] == 0:
        raise ValueError(
            f"target_probs must have shape [B, K+1, V] = [{batch}, {n_draft + 1}, V], got {tuple(target_probs.shape)}"
        )
    vocab = target_probs.shape[2]
    if draft_probs.shape != (batch, n_draft, vocab):
        raise ValueError(f"draft_probs must have shape [B, K, V] = [{batch}, {n_draft}, {vocab}], got {tuple(draft_probs.shape)}")
    if draft_ids.numel() and (int(draft_ids.min()) < 0 or int(draft_ids.max()) >= vocab):
        raise ValueError(f"draft_ids must lie in [0, {vocab})")
    gens = _row_generators(generators, batch)
    dev = target_probs.device
    d = draft_ids.long()
    p = target_probs.float()
    q = draft_probs.float()

    greedy = ((p > 0).sum(-1) == 1).all(-1)  # [B]
    random_rows = (~greedy).nonzero().flatten()
    rows = random_rows.tolist()
    # One draw of K+1 uniforms per sampled row: K acceptance tests, then the extra token.
    u = torch.zeros(batch, n_draft + 1, dtype=torch.float64, device=dev)
    if rows:
        u[random_rows] = _uniforms(gens, rows, n_draft + 1, dev)
    # Accept with probability min(1, p/q): u < p/q, written u*q < p so q(d) = 0 accepts (ratio = inf) without
    # dividing. Greedy rows keep u = 0, which accepts exactly when p(d) > 0, i.e. d is the target argmax.
    p_d = p[:, :n_draft].gather(2, d[..., None]).squeeze(2)  # [B, K]
    q_d = q.gather(2, d[..., None]).squeeze(2)  # [B, K]
    accept = u[:, :n_draft] * q_d < p_d
    n_acc = accept.long().cumprod(-1).sum(-1)  # [B], accepted prefix length

    # The one extra token: from norm(max(0, p_j - q_j)) at the first rejection j, or from p_K (q taken as 0).
    ar = torch.arange(batch, device=dev)
    p_fin = p[ar, n_acc]  # [B, V]
    if n_draft:
        q_fin = q[ar, n_acc.clamp_max(n_draft - 1)] * (n_acc < n_draft)[:, None]  # [B, V]; 0 at the bonus position
        resid = (p_fin - q_fin).clamp_min(0)
    else:
        resid = p_fin
    # An all-zero residual (only reachable with p == q up to rounding, or inconsistent inputs) falls back to p_j.
    resid = torch.where(resid.sum(-1, keepdim=True) > 0, resid, p_fin)
    final = p_fin.argmax(-1)  # greedy rows: exact target argmax
    if rows:
        final[random_rows] = _categorical(resid[random_rows], u[random_rows, n_draft])

    pos = torch.arange(n_draft + 1, device=dev)[None, :]  # [1, K+1]
    out = torch.cat([d, torch.full((batch, 1), -1, dtype=torch.int64, device=dev)], dim=1)
    out = torch.where(pos < n_acc[:, None], out, -1)
    out.scatter_(1, n_acc[:, None], final[:, None])
    return n_acc, out
