"""``generation_config.json``: what a model directory says about generating with it.

Three things are read (as vLLM's ``--generation-config auto`` reads them):

* the sampling defaults a request may override (:data:`SAMPLING_KEYS`); ``do_sample`` is not used;
* ``eos_token_id`` (an id or a list of ids): every one of them ends a sequence, beside config.json's and
  the tokenizer's end-of-sequence ids (release checkpoints list ``<|im_end|>`` only here);
* ``max_new_tokens``: the cap of a chat request that does not set ``max_tokens``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
FILE = "generation_config.json"


@dataclass(frozen=True)
class GenerationConfig:
    sampling: dict[str, Any] = field(default_factory=dict)
    eos_token_ids: tuple[int, ...] = ()
    max_new_tokens: int | None = None

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], required: bool = False) -> GenerationConfig:
        """Read ``directory/generation_config.json``; an empty config when there is none (unless ``required``:
        then ``FileNotFoundError``). A ``ValueError`` naming the file for a malformed value."""
        path = os.path.join(directory, FILE)
        if not os.path.isfile(path):
            if required:
                raise FileNotFoundError(f"no {FILE} in {directory}")
            return cls()
        try:
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{path} must hold a JSON object")
        eos = cfg.get("eos_token_id")
        eos_list = [] if eos is None else (eos if isinstance(eos, list) else [eos])
        if any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in eos_list):
            raise ValueError(f"{path}: eos_token_id must be a token id or a list of them, got {eos!r}")
        cap = cfg.get("max_new_tokens")
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            raise ValueError(f"{path}: max_new_tokens must be a positive integer, got {cap!r}")
        return cls({k: cfg[k] for k in SAMPLING_KEYS if cfg.get(k) is not None}, tuple(eos_list), cap)
