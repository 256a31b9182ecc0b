"""``MiMoForCausalLM``: the model with the loading and saving methods Hugging Face users expect.

The network itself (:class:`mimo.model.CausalLM`) knows nothing of files; this subclass adds
``from_pretrained`` / ``save_pretrained`` on top, and ``__call__`` returns an object with
``.logits`` like transformers' models do.
"""

from __future__ import annotations

import os

import torch

from mimo.checkpoint.export import DEFAULT_SHARD_BYTES, save_pretrained
from mimo.checkpoint.loader import load_pretrained
from mimo.config import MiMoConfig
from mimo.model.causal_lm import CausalLM


class MiMoForCausalLM(CausalLM):
    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: torch.dtype | str | None = None, progress: bool = False
    ) -> MiMoForCausalLM:
        """Load a hub-layout directory (``config.json`` + safetensors). ``dtype`` default float32; 'auto' = config's."""
        return load_pretrained(path, dtype=dtype, model_cls=cls, progress=progress)  # type: ignore[return-value]

    @classmethod
    def from_config(cls, config: MiMoConfig, seed: int | None = 0, dtype: torch.dtype = torch.float32) -> MiMoForCausalLM:
        """A randomly initialised model."""
        model = cls(config)
        model.init_weights(seed)
        return model.to(dtype)

    def save_pretrained(
        self, path: str | os.PathLike, max_shard_bytes: int = DEFAULT_SHARD_BYTES, dtype: torch.dtype | None = None
    ) -> None:
        save_pretrained(self, path, max_shard_bytes=max_shard_bytes, dtype=dtype)
