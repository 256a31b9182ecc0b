"""``MiMoForCausalLM``: the model with the loading and saving methods Hugging Face users expect.

The network itself (:class:`mimo.model.CausalLM`) knows nothing of files; this subclass adds
``from_pretrained`` / ``save_pretrained`` on top, and ``__call__`` returns an object with
``.logits`` like transformers' models do.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from mimo.checkpoint.export import DEFAULT_SHARD_BYTES, save_pretrained
from mimo.checkpoint.loader import keep_router_fp32, load_pretrained
from mimo.checkpoint.slices import Slice
from mimo.config import MiMoConfig
from mimo.model.causal_lm import CausalLM


class MiMoForCausalLM(CausalLM):
    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: torch.dtype | str | None = "auto", progress: bool = False,
        mmap: bool = True, shard: Callable[[CausalLM], dict[str, Slice]] | None = None,
    ) -> MiMoForCausalLM:
        """Load a hub-layout directory (``config.json`` + safetensors). ``dtype="auto"`` keeps every tensor as
        stored (FP8 stays FP8 with its scales); ``"float32"``/``"bfloat16"`` convert (dequantizing FP8).
        ``mmap=False`` copies the weights into the process's memory instead of mapping the files. ``shard``: a
        parallel plan that makes this process one rank's part (:func:`mimo.parallel.load_sharded`)."""
        return load_pretrained(path, dtype=dtype, model_cls=cls, progress=progress, mmap=mmap,  # type: ignore
                               shard=shard)

    @classmethod
    def from_config(cls, config: MiMoConfig, seed: int | None = 0, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> MiMoForCausalLM:
        """A randomly initialised model, built on the meta device and initialised in place on ``device``. The
        router and the RoPE frequencies stay fp32 whatever ``dtype`` is, as when loading."""
        with torch.device("meta"):
            model = cls(config)
        model.to_empty(device=device)
        model.init_weights(seed)
        model.to(dtype)
        keep_router_fp32(model)
        model.rotary.float().reset()  # RoPE frequencies stay fp32 (bf16 would round every angle), as when loading
        return model

    def save_pretrained(
        self, path: str | os.PathLike, max_shard_bytes: int = DEFAULT_SHARD_BYTES, dtype: torch.dtype | None = None,
        quantization: str | None = None, block: int | tuple[int, int] = 128,
    ) -> None:
        """The hub layout (``quantization="fp8"``: the release's FP8 layout with ``block`` scales); see
        :func:`mimo.checkpoint.export.save_pretrained`."""
        save_pretrained(self, path, max_shard_bytes=max_shard_bytes, dtype=dtype, quantization=quantization,
                        block=block)
