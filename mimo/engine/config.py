"""``EngineConfig``: the settings of an engine, in one place (vLLM's names where vLLM has one).

The attention backend is not among them: it is the model's setting (``model.set_attention_backend``),
which ``LLM`` applies when it prepares the model.

``LLM``, ``Engine``, the CLI and the server all build one of these instead of passing the same knobs along;
each field is validated here, once, with a message that names it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mimo.engine.policy import POLICIES


@dataclass(frozen=True)
class EngineConfig:
    num_speculative_tokens: int = 0  # MTP draft tokens per step (0: no speculation); the most, when adaptive
    speculative_policy: str = "adaptive"  # "adaptive": drafts per step from measured cost and acceptance; "fixed"
    max_num_seqs: int = 16  # sequences decoded together (cache slots)
    max_model_len: int | None = None  # prompt + completion tokens; None: the model's
    prefill_chunk: int = 512  # prompt tokens prefilled per step (over all waiting prompts)
    compile: bool = False  # decode and verify steps through torch.compile
    device: str | None = None  # where the model runs; None: where its weights are
    cpu_kernels: bool = True  # load mimo's C++ decode kernels when the model runs on a CPU
    tensor_parallel_size: int = 1  # ranks the model is split over (LLM starts the others; mimo.engine.ranks)
    enable_expert_parallel: bool = False  # routed experts split by expert over those ranks, not by size
    # With expert parallelism: steps of at least this many tokens send each assignment to its expert's rank by
    # all-to-all instead of summing partial outputs with one all-reduce (None: never; see benchmarks/README.md)
    expert_all_to_all_from: int | None = None

    def __post_init__(self) -> None:
        k = self.num_speculative_tokens
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"num_speculative_tokens must be an integer >= 0, got {k!r}")
        if self.speculative_policy not in POLICIES:
            raise ValueError(f"speculative_policy must be one of {', '.join(POLICIES)}, "
                             f"got {self.speculative_policy!r}")
        for name in ("max_num_seqs", "prefill_chunk", "tensor_parallel_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 2):
            raise ValueError(f"max_model_len must be an integer >= 2 (prompt plus one token), got {self.max_model_len!r}")

    def replace(self, **changes: object) -> EngineConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def fields(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))
