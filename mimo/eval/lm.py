"""Held-out evaluation of a code model: loss, bits per byte with baselines, MTP accuracy and acceptance.

* Loss: each held-out file is scored whole, as ``<|endoftext|>`` + its tokens, in windows of
  ``seq_len`` tokens (no overlap, so each window's first tokens see less context); the
  reported nats/token and bits per byte cover every token and every byte of every file.
* Baselines on the same bytes: a unigram model of the training split's tokens (add-one
  smoothing) and ``zlib`` level 9 over the concatenated files.
* MTP: per-depth top-1 accuracy of block k at predicting t[i+k+1] in the same windows.
* Acceptance length: greedy speculative decoding with k = 1..K drafts from prefixes of the
  held-out files (never random tokens: nothing is predictable there), tokens per main-model
  decode forward, plus wall-clock speed of k = K against k = 0 and a check that the texts match.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from mimo.model.causal_lm import CausalLM
from mimo.tokenizer import Tokenizer


@dataclass
class EvalReport:
    files: int = 0
    tokens: int = 0
    bytes: int = 0
    loss_nats_per_token: float = 0.0
    bits_per_byte: float = 0.0
    unigram_bits_per_byte: float | None = None
    zlib_bits_per_byte: float = 0.0
    mtp_top1_accuracy: list[float] = field(default_factory=list)  # depth 1..K
    acceptance_length: dict[int, float] = field(default_factory=dict)  # k -> tokens per decode forward (fixed k)
    speculative_speedup: float | None = None  # wall-clock tokens/s at k = K over k = 0 (fixed k)
    speculative_outputs_identical: bool | None = None
    tokens_per_s: dict[str, float] = field(default_factory=dict)  # "k=0".."k=K", "adaptive": batch-1 decode
    adaptive: dict = field(default_factory=dict)  # the adaptive policy's run: drafts per step, accepted, speed-up
    depth_acceptance: list[float] = field(default_factory=list)  # at k = K: P(draft j accepted | 1..j-1 were)
    entropy: dict = field(default_factory=dict)  # acceptance length against next-token entropy (mimo.eval.acceptance)


@torch.no_grad()
def score_files(model: CausalLM, tokenizer: Tokenizer, texts: list[str], seq_len: int = 512,
                progress: bool = True) -> EvalReport:
    eot = tokenizer.eos_token_id
    n_mtp = model.config.num_mtp_layers
    device = next(model.parameters()).device
    nll, n_tok, n_bytes = 0.0, 0, 0
    hits = [0] * n_mtp
    counts = [0] * n_mtp
    for text in tqdm(texts, desc="scoring held-out files", disable=not progress):
        ids = [eot] + tokenizer.encode(text)
        n_bytes += len(text.encode("utf-8"))
        for s in range(0, len(ids) - 1, seq_len):
            window = torch.tensor([ids[s : s + seq_len + 1]], device=device)
            inp, tgt = window[:, :-1], window[:, 1:]
            hidden = model.trunk(inp)
            logits = model.compute_logits(hidden).float()
            nll += torch.nn.functional.cross_entropy(logits[0], tgt[0], reduction="sum").item()
            n_tok += tgt.shape[1]
            for k, chain in enumerate(model.mtp_chain(inp, hidden, n_mtp), 1):
                target = window[:, k + 1 : k + 1 + chain.shape[1]]  # row i predicts t[i+k+1]
                n = target.shape[1]
                pred = model.compute_logits(chain[:, :n]).argmax(-1)
                hits[k - 1] += int((pred == target).sum())
                counts[k - 1] += n
    return EvalReport(
        files=len(texts), tokens=n_tok, bytes=n_bytes, loss_nats_per_token=nll / n_tok,
        bits_per_byte=nll / math.log(2) / n_bytes,
        zlib_bits_per_byte=len(zlib.compress("".join(texts).encode("utf-8"), 9)) * 8 / n_bytes,
        mtp_top1_accuracy=[h / c if c else 0.0 for h, c in zip(hits, counts)],
    )


def unigram_bits_per_byte(train_tokens: np.ndarray, tokenizer: Tokenizer, texts: list[str]) -> float:
    """Cross-entropy of the held-out tokens under the training split's token frequencies (add-one)."""
    v = tokenizer.vocab_size
    freq = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=v).astype(np.float64) + 1.0
    logp = np.log(freq / freq.sum())
    nll, n_bytes = 0.0, 0
    for text in texts:
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        nll -= float(logp[ids].sum())
        n_bytes += len(text.encode("utf-8"))
    return nll / math.log(2) / n_bytes
