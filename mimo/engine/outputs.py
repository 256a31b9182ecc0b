"""What the engine hands back: vLLM's RequestOutput / CompletionOutput shape plus speculative statistics."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), best first


def drafts_histogram(drafts_per_step: dict[int, int]) -> str:
    """``{drafts: steps}`` as the tables print it: ``"0:31 1:4 3:3"`` (``"-"`` when empty)."""
    return " ".join(f"{k}:{n}" for k, n in sorted(drafts_per_step.items())) or "-"


@dataclass
class SpecStats:
    """Per request: main-model forward passes spent decoding, drafted and accepted tokens."""

    decode_steps: int = 0  # main-model forward passes after prefill (one per decode / verify step)
    prefill_chunks: int = 0
    drafted: int = 0
    accepted: int = 0  # drafts verification accepted that reached the output (a stop may cut a step short)
    decode_tokens: int = 0  # tokens emitted by decode steps (the first token comes from prefill)
    drafts_per_step: dict[int, int] = field(default_factory=dict)  # drafts made in a step -> steps

    @property
    def acceptance_length(self) -> float:
        """Tokens per main-model decode forward (1.0 without speculation; at most k + 1)."""
        return self.decode_tokens / self.decode_steps if self.decode_steps else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" | "abort" | "error" | None while running
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    logprobs: list[TokenLogprob] | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    stats: SpecStats = field(default_factory=SpecStats)
    cache_bytes: int = 0  # KV-cache bytes the request held at its peak


@dataclass
class StreamDelta:
    """One step's news for one request (the server streams these)."""

    request_id: str
    text: str
    token_ids: list[int]
    index: int = 0  # which of the request's n samples
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[TokenLogprob] | None = None
    error: str | None = None
    # One entry per token of ``token_ids``: 0 = sampled from the main model (prefill's token, a plain decode
    # token, a verify step's correction or bonus token), k = 1..3 = MTP block k's draft, accepted by verification.
    provenance: list[int] | None = None
