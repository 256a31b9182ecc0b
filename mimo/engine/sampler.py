"""Batch sampling for the engine: per-row SamplingParams -> the ops in :mod:`mimo.ops.sampling`."""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch

from mimo.engine.outputs import TokenLogprob
from mimo.engine.params import SamplingParams
from mimo.ops import sampling as ops


def target_probs(
    logits: torch.Tensor, params: Seq[SamplingParams], prompts: Seq[Seq[int]], outputs: Seq[Seq[int]]
) -> torch.Tensor:
    """The distribution each row samples from: penalties (with each row's own history), then filters."""
    if any(p.has_penalties for p in params):
        logits = ops.apply_penalties(
            logits.float(), prompts, outputs,
            [p.repetition_penalty for p in params], [p.presence_penalty for p in params],
            [p.frequency_penalty for p in params],
        )
    return filtered_probs(logits, params)


def filtered_probs(logits: torch.Tensor, params: Seq[SamplingParams]) -> torch.Tensor:
    return ops.processed_probs(
        logits.float(), [p.temperature for p in params], [p.top_k for p in params],
        [p.top_p for p in params], [p.min_p for p in params],
    )


def sample(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    return ops.sample(probs, generators)


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, top_n: list[int | None]) -> list[TokenLogprob | None]:
    """OpenAI-style logprobs of the raw logits for the rows that asked for them."""
    want = [i for i, n in enumerate(top_n) if n is not None]
    out: list[TokenLogprob | None] = [None] * len(top_n)
    if not want:
        return out
    n_max = max(top_n[i] for i in want)  # type: ignore[type-var]
    idx = torch.tensor(want)
    lp, top_ids, top_lp = ops.logprobs(logits[idx].float(), token_ids[idx], n_max)
    for j, i in enumerate(want):
        n = top_n[i]
        top = list(zip(top_ids[j, :n].tolist(), top_lp[j, :n].tolist()))
        out[i] = TokenLogprob(int(token_ids[i]), float(lp[j]), top)
    return out
