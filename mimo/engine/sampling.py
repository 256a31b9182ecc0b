"""Token sampling, in one place: penalties, the filtered distribution, seeded draws, logprobs, and
speculative-decoding verification (rejection sampling), on the device of the logits.

:class:`SamplingBatch` is what the engine's runner uses: it turns one step's rows' :class:`SamplingParams`
into per-row tensors on the device once per step, and the host-side facts that decide which work to do
(all greedy? any penalties?) are read from the parameters, not from the tensors, so a step does not wait on
the device to find them out. Parameters are validated once, when a :class:`SamplingParams` is made; the
functions below check shapes only.

The functions are stateless and batched: row ``b`` of every tensor is one request with its own parameters
(1-D tensors or Python lists of length ``B``) and its own ``torch.Generator``.

Semantics follow vLLM (the engine's API is in vLLM's shape):

- ``apply_penalties``: the repetition penalty (CTRL, Keskar et al. 2019, as in vLLM/HF) divides positive and
  multiplies non-positive logits of every token seen in the prompt or output; presence and frequency penalties
  (OpenAI semantics) subtract ``presence * (count > 0) + frequency * count`` over output tokens only.
- ``processed_probs``: ``softmax(logits / T)``, then min-p, top-k, top-p, in vLLM v1's order (min-p is decided
  on the temperature-scaled full distribution; top-p on the distribution renormalised after min-p and top-k).
  ``T == 0`` means greedy: a one-hot at ``torch.argmax`` (ties -> lowest index).
- ``sample``: inverse-CDF sampling (what ``torch.multinomial`` does on CPU), batched: one float64 uniform per row
  from the row's own generator, then one float64 cumulative sum and ``searchsorted`` for the whole batch. On CPU
  this is cheaper than the exponential race (``argmax p / E``, vLLM's choice on GPU), which needs V random
  draws per row (benchmarks/README.md, "Why the code is the way it is"). A seeded request reproduces its tokens
  whatever else is in the batch.
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

from mimo.engine.outputs import TokenLogprob
from mimo.engine.params import SamplingParams

__all__ = ["SamplingBatch", "apply_penalties", "logprobs", "processed_probs", "rejection_sample", "sample",
           "token_logprobs"]

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


def _host_list(given: ParamT, tensor: torch.Tensor) -> list:
    """The parameter's values on the host: as given when a list, else read from the tensor (one sync)."""
    return list(given) if isinstance(given, (list, tuple)) else tensor.tolist()


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


def _flat_index(seqs: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """Token ids of ``seqs`` (ids in [0, vocab): the engine admits no other) as flat indices ``row * vocab + id``
    into a ``[len(seqs), vocab]`` table."""
    lengths = torch.as_tensor([len(s) for s in seqs], dtype=torch.int64, device=device)
    toks = torch.as_tensor([t for s in seqs for t in s], dtype=torch.int64, device=device)
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
    are not touched (and their token lists not even read). Values are not checked here: SamplingParams does.
    """
    batch, vocab = _check_2d(logits, "logits")
    for name, seqs in (("prompt_token_ids", prompt_token_ids), ("output_token_ids", output_token_ids)):
        if len(seqs) != batch:
            raise ValueError(f"{name} must have one list per row: expected {batch}, got {len(seqs)}")
    dev = logits.device
    rep = _param(repetition_penalty, batch, "repetition_penalty", torch.float32, dev)
    pres = _param(presence_penalty, batch, "presence_penalty", torch.float32, dev)
    freq = _param(frequency_penalty, batch, "frequency_penalty", torch.float32, dev)
    # Which rows to touch is decided on the host when the parameters come as lists (no device round trip).
    rep_list = _host_list(repetition_penalty, rep)
    pf_list = [p != 0.0 or f != 0.0 for p, f in zip(_host_list(presence_penalty, pres), _host_list(frequency_penalty, freq))]
    rep_idx = [i for i, r in enumerate(rep_list) if r != 1.0]
    pf_idx = [i for i, on in enumerate(pf_list) if on]
    if not rep_idx and not pf_idx:
        return logits
    rep_rows = torch.tensor(rep_idx, dtype=torch.long, device=dev)
    pf_rows = torch.tensor(pf_idx, dtype=torch.long, device=dev)
    # Work on the (few) seen token positions through flat indices rather than on dense [B, V] masks.
    logits = logits.clone(memory_format=torch.contiguous_format)
    flat = logits.view(-1)
    # vLLM order: repetition first (on the sign of the raw logit), then frequency and presence.
    if rep_idx:
        seqs = [list(prompt_token_ids[i]) + list(output_token_ids[i]) for i in rep_idx]
        idx = torch.unique(_flat_index(seqs, vocab, dev))
        idx = rep_rows[idx // vocab] * vocab + idx % vocab  # [n, V] table -> batch rows
        r = rep[idx // vocab].to(flat.dtype)
        v = flat[idx]
        flat[idx] = torch.where(v > 0, v / r, v * r)
    if pf_idx:
        idx, counts = torch.unique(_flat_index([output_token_ids[i] for i in pf_idx], vocab, dev), return_counts=True)
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

    x = logits.float()
    greedy = temp == 0
    out_greedy = torch.zeros(batch, vocab, dtype=torch.float32, device=dev)
    out_greedy.scatter_(1, x.argmax(-1, keepdim=True), 1.0)
    if all(t == 0 for t in _host_list(temperature, temp)):
        return out_greedy

    # Greedy rows go through the maths with T = 1 and are overwritten at the end (keeps everything batched).
    probs = torch.softmax(x / torch.where(greedy, 1.0, temp)[:, None], dim=-1)  # [B, V]
    # Greedy rows must not turn a filter on (their filters are irrelevant) nor trip the sort below.
    use_k = (k > 0) & (k < vocab) & ~greedy
    use_p = (p_top < 1) & ~greedy
    use_min = (p_min > 0) & ~greedy

    if any(m > 0 for m in _host_list(min_p, p_min)):
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


# Top-p first looks at the best 1024 tokens, then the best 16384 (a topk that much narrower is far cheaper than
# sorting a 152k vocabulary on CPU), and sorts the whole row only when neither prefix holds top_p of the
# (renormalised) mass.
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
    n_drafts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify K drafted tokens per row against the target model; returns ``(accepted_counts [B], output_ids)``.

    ``n_drafts [B]`` (default: K for every row): row b drafted only its first ``n_drafts[b]`` tokens (the rest
    is padding); it accepts at most those, and its extra token comes from position ``n_drafts[b]`` when all were
    accepted (the bonus), as if K were ``n_drafts[b]``.

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
    if n_drafts is not None:
        if n_drafts.shape != (batch,) or (batch and (int(n_drafts.min()) < 0 or int(n_drafts.max()) > n_draft)):
            raise ValueError(f"n_drafts must be [B] = [{batch}] counts in 0..{n_draft}")
        accept &= torch.arange(n_draft, device=dev)[None, :] < n_drafts.to(dev)[:, None]
    limit = n_drafts.to(dev) if n_drafts is not None else torch.full((batch,), n_draft, device=dev)
    n_acc = accept.long().cumprod(-1).sum(-1)  # [B], accepted prefix length

    # The one extra token: from norm(max(0, p_j - q_j)) at the first rejection j, or from p_K (q taken as 0).
    ar = torch.arange(batch, device=dev)
    p_fin = p[ar, n_acc]  # [B, V]
    if n_draft:
        q_fin = q[ar, n_acc.clamp_max(n_draft - 1)] * (n_acc < limit)[:, None]  # [B, V]; 0 at the bonus position
        resid = (p_fin - q_fin).clamp_min(0)
    else:
        resid = p_fin
    # An all-zero residual (only reachable with p == q up to rounding, or inconsistent inputs) falls back to p_j.
    resid = torch.where(resid.sum(-1, keepdim=True) > 0, resid, p_fin)
    final = p_fin.argmax(-1)  # greedy rows: exact target argmax
    if rows:
        final[random_rows] = _categorical(resid[random_rows], u[random_rows, n_draft])

    return n_acc, _emitted(d, n_acc, final)


def _emitted(drafts: torch.Tensor, n_acc: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """``output_ids [B, K+1]``: each row's first ``n_acc`` drafts, then its ``final`` token, then -1."""
    batch, n_draft = drafts.shape
    pos = torch.arange(n_draft + 1, device=drafts.device)[None, :]  # [1, K+1]
    out = torch.cat([drafts, drafts.new_full((batch, 1), -1)], dim=1)
    out = torch.where(pos < n_acc[:, None], out, -1)
    out.scatter_(1, n_acc[:, None], final[:, None])
    return out


def greedy_verify(draft_ids: torch.Tensor, target_ids: torch.Tensor, n_drafts: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rejection_sample` where every row's target is greedy (one-hot at ``target_ids [B, K+1]``, the target's
    argmax at each position): the same ``(accepted_counts, output_ids)`` from the argmaxes alone, without the
    ``[B, K+1, V]`` probabilities (at batch 1 on a small model those cost a few per cent of a verify step)."""
    n_draft = draft_ids.shape[1]
    d = draft_ids.long()
    accept = d == target_ids[:, :n_draft]
    if n_drafts is not None:
        accept &= torch.arange(n_draft, device=d.device)[None, :] < n_drafts.to(d.device)[:, None]
    n_acc = accept.long().cumprod(-1).sum(-1)
    return n_acc, _emitted(d, n_acc, target_ids.gather(1, n_acc[:, None]).squeeze(1))


# --------------------------------------------------------------------------------------------------- the batch


class SamplingBatch:
    """One step's sampled rows: their parameters (per-row tensors on the logits' device are built from these
    lists once per call), their generators, and what each row asks for (logprobs, penalties) as host facts.

    ``histories`` gives each row's (prompt ids, output ids) when some row has penalties; rows are in the
    order of ``params``. :meth:`repeat` makes the batch of a verify step (each row scored at k + 1
    positions), where position i of a row is scored as if its first i drafts were already generated.
    """

    def __init__(self, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None],
                 device: torch.device | str, histories: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None
                 ) -> None:
        self.params = list(params)
        self.generators = list(generators)
        self.device = torch.device(device)
        self.greedy = all(p.temperature == 0 for p in self.params)
        self.penalties = any(p.has_penalties for p in self.params)
        # every row takes the argmax of its raw logits: sampling, drafting and verifying need no distributions
        self.argmax_only = self.greedy and not self.penalties
        self.histories = list(histories) if histories is not None else None
        if self.penalties and self.histories is None:
            raise ValueError("rows with penalties need their token histories")
        self.top_logprobs = [p.logprobs for p in self.params]
        self._lists = {
            "temperature": [p.temperature for p in self.params], "top_k": [p.top_k for p in self.params],
            "top_p": [p.top_p for p in self.params], "min_p": [p.min_p for p in self.params],
        }

    def __len__(self) -> int:
        return len(self.params)

    def repeat(self, n: int, drafts: torch.Tensor | None = None) -> SamplingBatch:
        """Each row ``n`` times (a verify step's positions); with penalties, position i of row j sees the row's
        history plus ``drafts[j, :i]``."""
        hist = None
        if self.penalties:
            assert self.histories is not None and drafts is not None
            extra = drafts.tolist()
            hist = [(prompt, list(out) + extra[j][:i]) for j, (prompt, out) in enumerate(self.histories)
                    for i in range(n)]
        return SamplingBatch([p for p in self.params for _ in range(n)],
                             [g for g in self.generators for _ in range(n)], self.device, hist)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution each row samples from ``[B, V]`` float32: penalties (with the row's history), then
        temperature, min-p, top-k, top-p."""
        x = logits.float()
        if self.penalties:
            assert self.histories is not None
            ps = self.params
            x = apply_penalties(x, [h[0] for h in self.histories], [h[1] for h in self.histories],
                                [p.repetition_penalty for p in ps], [p.presence_penalty for p in ps],
                                [p.frequency_penalty for p in ps])
        return self.filtered(x)

    def filtered(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature and filters without penalties: a draft's distribution (drafts are proposals; the verify
        step scores them with the penalties)."""
        lists = self._lists
        return processed_probs(logits.float(), lists["temperature"], lists["top_k"], lists["top_p"], lists["min_p"])

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """One token per row ``[B]``; greedy batches without penalties take the argmax without building probs."""
        if self.argmax_only:
            return logits.argmax(-1)
        return sample(self.probs(logits), self.generators)

    def logprobs(self, logits: torch.Tensor, token_ids: torch.Tensor) -> list[TokenLogprob | None]:
        """OpenAI-style logprobs of the raw logits for the rows that asked for them (``None`` elsewhere)."""
        return token_logprobs(logits, token_ids, self.top_logprobs)


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, top_n: Sequence[int | None]
                   ) -> list[TokenLogprob | None]:
    """:func:`logprobs` as :class:`TokenLogprob` objects, for the rows whose ``top_n`` is not ``None``."""
    want = [i for i, n in enumerate(top_n) if n is not None]
    out: list[TokenLogprob | None] = [None] * len(top_n)
    if not want:
        return out
    n_max = max(top_n[i] for i in want)  # type: ignore[type-var]
    idx = torch.tensor(want, device=logits.device)
    lp, top_ids, top_lp = logprobs(logits[idx].float(), token_ids[idx], n_max)
    lp, top_ids, top_lp, ids = lp.tolist(), top_ids.tolist(), top_lp.tolist(), token_ids[idx].tolist()
    for j, i in enumerate(want):
        n = top_n[i]
        out[i] = TokenLogprob(int(ids[j]), float(lp[j]), list(zip(top_ids[j][:n], top_lp[j][:n])))
    return out
