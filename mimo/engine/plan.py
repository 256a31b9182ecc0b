"""What the scheduler asks of the runner each step (:class:`StepPlan`), and what the runner answers.

The plan is host data only (ints, lists, :class:`SamplingParams`), so it can be handed to a runner on
another device or broadcast to every rank of a parallel group, and every runner that executes the same
plan from the same state produces the same tokens.

A plan names sequences by their cache *slot*. In order, the runner:

1. applies ``moves`` (a sequence moved to a lower slot when another left: compaction) and ``starts``
   (a sequence takes a slot: its cache rows, MTP state and random generator start afresh);
2. prefills ``prefill`` chunks as one padded batch, sampling the first token of every chunk that ends its
   prompt;
3. runs one decode step over ``decode`` rows: a plain step when no row drafts, else MTP drafting and one
   verify forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mimo.engine.outputs import TokenLogprob
from mimo.engine.params import SamplingParams


@dataclass(frozen=True)
class SlotStart:
    slot: int
    seed: int | None  # the sample's random seed (None: the process's generator)


@dataclass(frozen=True)
class PrefillChunk:
    slot: int
    start: int  # position of token_ids[0]
    token_ids: list[int]
    prompt_len: int
    sample: bool  # the chunk ends the prompt: sample the first token


@dataclass(frozen=True)
class DecodeRow:
    slot: int
    token: int  # the last committed token, fed at ``position``
    position: int
    drafts: int = 0  # MTP draft tokens this step (the most: see StepPlan.stop_unsure)


@dataclass
class StepPlan:
    moves: list[tuple[int, int, int]] = field(default_factory=list)  # (from slot, to slot, cached positions)
    starts: list[SlotStart] = field(default_factory=list)
    prefill: list[PrefillChunk] = field(default_factory=list)
    decode: list[DecodeRow] = field(default_factory=list)
    params: dict[int, SamplingParams] = field(default_factory=dict)  # slot -> how it samples (rows that sample)
    # slot -> (prompt ids, output ids), for rows whose parameters have penalties
    histories: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)
    # per draft depth: a row stops drafting at this depth when its draft is unsure (below the policy's floor):
    # True; False: drafts are only marked unsure (the policy is still learning); None: not measured
    stop_unsure: tuple[bool | None, ...] = ()

    def is_empty(self) -> bool:
        return not (self.moves or self.starts or self.prefill or self.decode)


@dataclass
class RowResult:
    """The tokens one slot produced this step: sampled (prefill's first, a plain decode's one), or accepted
    drafts followed by the verify step's own token."""

    tokens: list[int]
    logprobs: list[TokenLogprob | None]
    drafted: int = 0
    accepted: int = 0
    provenance: list[int] = field(default_factory=list)  # per token: 0 = the trunk, k = MTP draft of depth k
    unsure: list[bool] = field(default_factory=list)  # per kept draft: below the policy's confidence floor
    catchup: tuple[int, int] = (0, 0)  # block 1's catch-up drafts scored and right (speculative.draft)
