"""mimo: an open, readable implementation of Xiaomi MiMo-V2-Flash.

``import mimo`` is cheap: the public names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "MiMoConfig": "mimo.config",
    "MiMoForCausalLM": "mimo.checkpoint.pretrained",
    "LLM": "mimo.engine.llm",
    "SamplingParams": "mimo.engine.params",
    "StructuredOutputsParams": "mimo.engine.params",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mimo' has no attribute {name!r}")
