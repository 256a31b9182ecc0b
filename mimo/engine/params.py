"""SamplingParams: what one request asks of the sampler, in vLLM's shape and with vLLM's defaults; with
StructuredOutputsParams, the constraint a request's tokens must follow (:mod:`mimo.engine.structured`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Exactly one constraint: ``json`` (a JSON schema, as a dict or its text; ``{"type": "object"}`` for any
    object), ``regex``, ``grammar`` (EBNF, xgrammar's dialect of GBNF) or ``structural_tag`` (xgrammar's
    structural-tag JSON, a dict or its text)."""

    json: dict[str, Any] | str | None = None
    regex: str | None = None
    grammar: str | None = None
    structural_tag: dict[str, Any] | str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("json", "regex", "grammar", "structural_tag") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"structured outputs take exactly one of json, regex, grammar, structural_tag; "
                             f"got {', '.join(given) or 'none'}")
        for k in ("json", "structural_tag"):
            v = getattr(self, k)
            if v is not None and not isinstance(v, dict | str):
                raise ValueError(f"structured outputs: {k} must be a dict or a JSON string, got {type(v).__name__}")
        for k in ("regex", "grammar"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, str) or not v):
                raise ValueError(f"structured outputs: {k} must be a non-empty string")

    @property
    def kind(self) -> str:
        return next(k for k in ("json", "regex", "grammar", "structural_tag") if getattr(self, k) is not None)

    def key(self) -> tuple[str, str]:
        """A hashable identity (dicts canonicalised), for the compiled-grammar cache."""
        v = getattr(self, self.kind)
        return self.kind, v if isinstance(v, str) else json.dumps(v, sort_keys=True)


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    max_tokens: int | None = 16  # None: up to the model's context
    ignore_eos: bool = False
    logprobs: int | None = None  # top-N alternatives per generated token (0 = only the chosen token's)
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputsParams | None = None  # constrain the tokens (needs xgrammar)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.validate()

    def validate(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        if not isinstance(self.n, int) or self.n < 1:
            raise bad("n", "an integer >= 1")
        if not _finite(self.temperature) or self.temperature < 0:
            raise bad("temperature", "a finite number >= 0 (0 = greedy)")
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise bad("top_k", "an integer >= -1 (0 or -1 = off)")
        if not _finite(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", "in [0, 1]")
        if not _finite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "a finite number > 0 (1 = off)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not _finite(getattr(self, name)) or not -2 <= getattr(self, name) <= 2:
                raise bad(name, "in [-2, 2]")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise bad("max_tokens", "an integer >= 1")
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError("stop_token_ids must be non-negative integers")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= 20):
            raise bad("logprobs", "an integer in [0, 20]")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not -(2**63) <= self.seed < 2**63):
            raise bad("seed", "a 64-bit signed integer")
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise bad("structured_outputs", "a StructuredOutputsParams")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        """Whether the sampler must look at the token history at all."""
        return self.repetition_penalty != 1 or bool(self.presence_penalty) or bool(self.frequency_penalty)


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
