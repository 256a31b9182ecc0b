"""Per-request state inside the engine."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mimo.engine.outputs import SpecStats, TokenLogprob
from mimo.engine.params import SamplingParams


@dataclass
class ChainRows:
    """Committed MTP chain states h^k for consecutive positions ``start .. start + len - 1``."""

    start: int = 0
    rows: torch.Tensor | None = None  # [n, D]

    def end(self) -> int:
        return self.start + (0 if self.rows is None else self.rows.shape[0])

    def append(self, start: int, rows: torch.Tensor) -> None:
        if self.rows is None or self.rows.shape[0] == 0:
            self.start, self.rows = start, rows
            return
        if start != self.end():
            raise AssertionError(f"chain rows must be contiguous: have up to {self.end()}, got {start}")
        self.rows = torch.cat([self.rows, rows], dim=0)

    def get(self, positions: range) -> torch.Tensor:
        assert self.rows is not None and positions.start >= self.start and positions.stop <= self.end(), (
            positions, self.start, self.end())
        return self.rows[positions.start - self.start : positions.stop - self.start]

    def drop_through(self, position: int) -> None:
        """Forget rows at positions <= ``position``."""
        if self.rows is None:
            return
        cut = max(0, min(position + 1 - self.start, self.rows.shape[0]))
        self.rows = self.rows[cut:]
        self.start += cut


@dataclass(eq=False)  # identity semantics: sequences are compared and removed by object, never by value
class Sequence:
    request_id: str
    prompt: str | None
    prompt_ids: list[int]
    params: SamplingParams
    index: int = 0  # which of the request's n samples
    output_ids: list[int] = field(default_factory=list)
    provenance: list[int] = field(default_factory=list)  # per output token: 0 main model, k accepted draft of block k
    slot: int = -1
    num_computed: int = 0  # positions 0 .. num_computed-1 are in the main KV cache
    generator: torch.Generator | None = None
    detok: object | None = None  # IncrementalDetokenizer when a tokenizer is present
    text: str = ""
    sent_chars: int = 0  # text already reported (stop strings may hold some back)
    sent_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    error: str | None = None
    stats: SpecStats = field(default_factory=SpecStats)
    peak_cache_bytes: int = 0
    # MTP chain: chain[k] holds committed h^k (k = 0 is the trunk's normed output); frontier[k] is the last
    # position MTP block k+1 has processed with committed inputs only (its cache is valid through it).
    chain: list[ChainRows] = field(default_factory=list)
    frontier: list[int] = field(default_factory=list)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def prefilled(self) -> bool:
        return self.num_computed >= len(self.prompt_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
