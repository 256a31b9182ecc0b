"""The MiMo-V2-Flash network, single-device, knowing nothing of how it is loaded, served or trained.

The names below are imported on first use, so ``mimo.model.sizes`` (config arithmetic only) does not pull
in torch: ``mimo info`` and ``mimo --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CausalLM": "mimo.model.causal_lm",
    "CausalLMOutput": "mimo.model.causal_lm",
    "mtp_shift": "mimo.model.mtp",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mimo.model' has no attribute {name!r}")
