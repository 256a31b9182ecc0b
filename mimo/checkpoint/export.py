"""Writing a model in the hub layout: per-expert tensors, hub names, sharded safetensors + index, config.json,
and the release's FP8 layout (e4m3 weights with ``weight_scale_inv`` block scales).

transformers' ``MiMoV2FlashForCausalLM.from_pretrained`` reads what this writes, and the
config carries both the hub and transformers spellings (see :mod:`mimo.config`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import torch
from safetensors.torch import save_file

from mimo.checkpoint.hf_keys import SCALE_SUFFIX, param_to_hub
from mimo.config import FULL, MiMoConfig
from mimo.model.causal_lm import CausalLM
from mimo.model.layers import Experts, Linear
from mimo.ops.fp8 import FP8, block_shape, quantize_block_fp8

DEFAULT_SHARD_BYTES = 5 * 1024**3


def hub_tensors(model: CausalLM) -> Iterator[tuple[str, torch.Tensor]]:
    """(hub name, tensor) for every stored tensor, in state-dict order, without copying whole stacks."""
    n_exp = model.config.n_routed_experts
    for name, t in model.state_dict().items():
        for hub, target in param_to_hub(name, n_exp):
            yield hub, (t if target.expert is None else t[target.expert])


# What the release stores as FP8 (paper §2.1: attention output projections, embedding and head stay bf16; the
# router stays fp32; the MTP blocks' eh_proj is bf16 too). Everything else 2-D of these names is quantized.
_FP8_SUFFIXES = (".q_proj.weight", ".k_proj.weight", ".v_proj.weight",  # attention, trunk and MTP
                 ".gate_proj.weight", ".up_proj.weight", ".down_proj.weight")  # dense MLPs and every expert
_FP32 = (".mlp.gate.weight", ".mlp.gate.e_score_correction_bias")


def quantized_in_release(hub: str) -> bool:
    """Whether the release's layout stores this hub tensor as FP8 (with a ``weight_scale_inv``)."""
    return hub.endswith(_FP8_SUFFIXES)


def quantization_config(block: tuple[int, int], model: CausalLM) -> dict:
    """The ``quantization_config`` of config.json for the release's layout."""
    ignored = [n[: -len(".weight")] for n in model.state_dict()
               if n.endswith((".o_proj.weight", ".eh_proj.weight"))]
    return {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": list(block),
            "ignored_layers": ignored}


def scale_chunks(cfg: MiMoConfig, hub: str) -> int:
    """Row chunks of a weight's scale grid: the release quantized the full-attention k_proj per KV head."""
    if hub.endswith(".self_attn.k_proj.weight") and ".mtp." not in hub:
        layer = int(hub.split(".layers.")[1].split(".")[0])
        if cfg.layer_types[layer] == FULL:
            return cfg.num_kv_heads(FULL)
    return 1


def save_pretrained(
    model: CausalLM,
    directory: str | os.PathLike,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    dtype: torch.dtype | None = None,
    quantization: str | None = None,
    block: int | tuple[int, int] = 128,
) -> None:
    """Save config.json and safetensors weights (sharded above ``max_shard_bytes``).

    FP8 weights are written as held, with their ``weight_scale_inv`` (and the config's
    ``quantization_config``). ``quantization="fp8"`` writes the release's layout from any model: the
    projections it stores as FP8 are quantized with ``block`` x ``block`` scales (the full-attention
    k_proj per KV head, as the release does), everything else in bf16 (``dtype`` to choose another) and the
    router in fp32. ``dtype`` converts the other floating tensors; an FP8 model saved without quantization
    must be dequantized first (``model.dequantize_(dtype)``)."""
    if quantization not in (None, "fp8"):
        raise ValueError(f"quantization must be None or 'fp8', got {quantization!r}")
    blk = block_shape(block)
    held_fp8 = any(t.dtype == FP8 for t in model.state_dict().values())
    if held_fp8 and dtype is not None and quantization is None:
        raise ValueError("this model holds FP8 weights: save them as they are (dtype=None), re-quantize "
                         "(quantization='fp8'), or convert them first with model.dequantize_(dtype)")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    for stale in os.listdir(directory):  # never leave shards of an older save next to the new index
        if stale.startswith("model") and (stale.endswith(".safetensors") or stale.endswith(".safetensors.index.json")):
            os.remove(os.path.join(directory, stale))
    cfg = model.config
    if quantization == "fp8":
        dtype = dtype or torch.bfloat16
        cfg = cfg.replace(quantization_config=quantization_config(blk, model))
    elif held_fp8 and cfg.quantization_config is None:
        cfg = cfg.replace(quantization_config=quantization_config(_held_block(model), model))
    elif not held_fp8:
        cfg = cfg.replace(quantization_config=None)
    dt = dtype or model.dtype
    cfg = cfg.replace(torch_dtype=str(dt).removeprefix("torch."))
    cfg.save(directory)

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for hub, x in _stored_tensors(model, dtype, quantization, blk):
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


def _held_block(model: CausalLM) -> tuple[int, int]:
    for m in model.modules():
        if isinstance(m, Experts | Linear) and m.is_fp8:
            return m.block
    return (128, 128)


def _stored_tensors(model: CausalLM, dtype: torch.dtype | None, quantization: str | None,
                    block: tuple[int, int]) -> Iterator[tuple[str, torch.Tensor]]:
    """(hub name, CPU tensor as written) for every tensor of the checkpoint."""
    for hub, x in hub_tensors(model):
        x = x.detach().to("cpu")
        if hub.endswith(_FP32):
            yield hub, x.float().contiguous()
        elif x.dtype == FP8 or hub.endswith(SCALE_SUFFIX):
            yield hub, x.contiguous()  # held as FP8 (its scales come as their own tensors)
        elif quantization == "fp8" and quantized_in_release(hub) and x.ndim == 2:
            q, scale = quantize_block_fp8(x, block, n_chunks=scale_chunks(model.config, hub))
            yield hub, q
            yield hub + SCALE_SUFFIX, scale
        elif x.is_floating_point():
            yield hub, x.to(dtype or x.dtype).contiguous()
        else:
            yield hub, x.contiguous()
