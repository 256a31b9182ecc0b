"""Per-request state the scheduler keeps on the host (token lists, text, stop state, statistics)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from mimo.engine.outputs import SpecStats, TokenLogprob
from mimo.engine.params import SamplingParams


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

    @property
    def seed(self) -> int | None:
        """The random seed of this sample: the request's seed plus its index (the n samples differ)."""
        return None if self.params.seed is None else self.params.seed + self.index

    @functools.cached_property
    def key(self) -> str:
        """This sample's name for the speculation policy (a request's n samples are separate rows)."""
        return f"{self.request_id}/{self.index}"

    @property
    def prefilled(self) -> bool:
        return self.num_computed >= len(self.prompt_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
