"""Writing a model in the hub layout: per-expert tensors, hub names, sharded safetensors + index, config.json.

transformers' ``MiMoV2FlashForCausalLM.from_pretrained`` reads what this writes, and the
config carries both the hub and transformers spellings (see :mod:`mimo.config`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import torch
from safetensors.torch import save_file

from mimo.checkpoint.hf_keys import param_to_hub
from mimo.model.causal_lm import CausalLM

DEFAULT_SHARD_BYTES = 5 * 1024**3


def hub_tensors(model: CausalLM) -> Iterator[tuple[str, torch.Tensor]]:
    """(hub name, tensor) for every stored tensor, in state-dict order, without copying whole stacks."""
    n_exp = model.config.n_routed_experts
    for name, t in model.state_dict().items():
        for hub, target in param_to_hub(name, n_exp):
            yield hub, (t if target.expert is None else t[target.expert])


def save_pretrained(
    model: CausalLM,
    directory: str | os.PathLike,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    dtype: torch.dtype | None = None,
) -> None:
    """Save config.json and safetensors weights (sharded above ``max_shard_bytes``)."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    for stale in os.listdir(directory):  # never leave shards of an older save next to the new index
        if stale.startswith("model") and (stale.endswith(".safetensors") or stale.endswith(".safetensors.index.json")):
            os.remove(os.path.join(directory, stale))
    cfg = model.config
    dt = dtype or next(model.parameters()).dtype
    cfg = cfg.replace(torch_dtype=str(dt).removeprefix("torch."))
    cfg.save(directory)

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for hub, x in hub_tensors(model):
        keep_fp32 = hub.endswith((".mlp.gate.weight", ".mlp.gate.e_score_correction_bias"))
        x = x.detach().to("cpu", torch.float32 if keep_fp32 else (dtype or x.dtype)).contiguous()
        nbytes = x.numel() * x.element_size()
        if x.untyped_storage().nbytes() != nbytes:
            x = x.clone()  # a view (fused projections, a slice of a stacked expert tensor): safetensors wants its own storage
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][hub] = x
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(directory, "model.safetensors"), metadata=meta)
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(directory, fname), metadata=meta)
        for k, v in shard.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    with open(os.path.join(directory, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
