"""Strict, lazy loading of a Hugging Face model directory into :class:`mimo.model.CausalLM`.

* The module tree is built on the ``meta`` device; each tensor is read once from the
  safetensors files and assigned (never two full copies of the weights in memory).
* Strict: every parameter must be filled and every tensor in the files must land somewhere
  (or be covered by a rule in :mod:`mimo.checkpoint.hf_keys`); otherwise a ``ValueError``
  lists the offending names. Shapes are checked against the config before any data is read.
* FP8 ``float8_e4m3fn`` weights with ``weight_scale_inv`` are dequantized (:mod:`mimo.ops.fp8`).
* Router weights and the balancing bias stay fp32 whatever ``dtype`` is asked for.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from mimo.checkpoint.hf_keys import SCALE_SUFFIX, Target, hub_to_param, is_ignored
from mimo.config import SLIDING, MiMoConfig
from mimo.model.causal_lm import CausalLM, RotaryTables
from mimo.ops.fp8 import dequantize_block_fp8
from mimo.utils.safetensors_index import weight_files

logger = logging.getLogger(__name__)

KEEP_FP32 = (".mlp.gate.weight", ".mlp.gate.e_score_correction_bias")
_FP8 = (torch.float8_e4m3fn, getattr(torch, "float8_e5m2", torch.float8_e4m3fn))
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: torch.dtype | str | None, config: MiMoConfig) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype or "float32"
    if dtype in (None, "auto"):
        name = config.torch_dtype if dtype == "auto" and config.torch_dtype else "float32"
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; choose from {', '.join(_DTYPES)} or 'auto'") from None


def keep_router_fp32(model: CausalLM) -> None:
    """Router weights and the balancing bias in fp32, whatever dtype the rest of the model has (paper §2.1)."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith(KEEP_FP32) and t.dtype != torch.float32:
            t.data = t.data.float()


def _short(names: list[str], n: int = 12) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _plan(model: CausalLM, files: dict[str, str]) -> dict[str, list[tuple[str, Target]]]:
    """Group hub tensors by the parameter they fill; raise listing every missing or unexpected key."""
    expected = dict(model.state_dict(keep_vars=True))
    plan: dict[str, list[tuple[str, Target]]] = defaultdict(list)
    unexpected, orphan_scales = [], []
    for hub in files:
        if is_ignored(hub):
            continue
        if hub.endswith(SCALE_SUFFIX):
            if hub[: -len(SCALE_SUFFIX)] not in files:
                orphan_scales.append(hub)
            continue
        t = hub_to_param(hub)
        if t is None or t.name not in expected:
            unexpected.append(hub)
            continue
        plan[t.name].append((hub, t))
    cfg = model.config
    missing = []
    for name in expected:
        got = plan.get(name, [])
        if ".experts." in name:  # a stacked expert tensor: one hub tensor per expert
            prefix, proj = name.rsplit(".", 1)
            have = {t.expert for _, t in got}
            missing += [f"{prefix}.{e}.{proj}.weight" for e in range(cfg.n_routed_experts) if e not in have]
            unexpected += [hub for hub, t in got if t.expert >= cfg.n_routed_experts]
        elif not got:
            missing.append(name)
        elif len(got) > 1:
            raise ValueError(f"checkpoint holds {len(got)} tensors for parameter {name}: {_short([h for h, _ in got])}")
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_short(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_short(unexpected)}")
    if orphan_scales:
        problems.append(f"{len(orphan_scales)} scale(s) without a weight: {_short(orphan_scales)}")
    if problems:
        raise ValueError(
            "checkpoint does not match the config: " + "; ".join(problems)
            + ". (Is num_hidden_layers / n_routed_experts / the MTP depth right for these weights?)"
        )
    return plan


def _expected_shape(param: torch.Tensor, t: Target) -> tuple[int, ...]:
    return tuple(param.shape) if t.expert is None else tuple(param.shape[1:])


def _read(f, hub: str, files: dict[str, str], dtype: torch.dtype, n_chunks: tuple[int, ...],
          index: tuple[slice, ...] | None = None) -> torch.Tensor:
    """One hub tensor as ``dtype`` (dequantized when FP8). ``index``: read only that slice of it, through
    safetensors' ``get_slice`` (the rest is never read): how a tensor-parallel rank reads its shard."""
    if index is not None:
        if hub + SCALE_SUFFIX in files:
            raise NotImplementedError(f"{hub}: reading a slice of an FP8 tensor needs its scale blocks sliced too")
        return f.get_slice(hub)[index].to(dtype)
    t = f.get_tensor(hub)
    scale_name = hub + SCALE_SUFFIX
    if t.dtype in _FP8:
        if scale_name not in files:
            raise ValueError(f"FP8 tensor {hub} has no {scale_name}: FP8 weights must come with their block scales")
        with safe_open(files[scale_name], framework="pt") as fs:
            scale = fs.get_tensor(scale_name)
        try:
            return dequantize_block_fp8(t, scale, dtype, chunk_candidates=n_chunks)
        except ValueError as e:
            raise ValueError(f"{hub}: {e}") from None
    if scale_name in files:
        raise ValueError(f"{scale_name} given for {hub}, which is {t.dtype}, not FP8")
    return t.to(dtype)


def load_pretrained(
    path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    model_cls: type[CausalLM] = CausalLM,
    config: MiMoConfig | None = None,
    progress: bool = False,
) -> CausalLM:
    """Build ``model_cls`` from a hub-layout directory; see the module docstring for the rules."""
    path = os.fspath(path)
    config = config or MiMoConfig.from_pretrained(path)
    dtype = resolve_dtype(dtype, config)
    files = weight_files(path)
    if config.num_mtp_layers and not any(k.startswith("model.mtp.") for k in files):
        # transformers drops model.mtp.* on load and so on save, but keeps the config field: a
        # documented exception to strictness, since the trunk is complete and usable on its own.
        logger.warning("config.json declares %d MTP block(s) but the checkpoint has no model.mtp.* tensors "
                       "(re-saved by transformers?); loading without MTP", config.num_mtp_layers)
        config = config.replace(num_nextn_predict_layers=0)
    with torch.device("meta"):
        model = model_cls(config)
    plan = _plan(model, files)
    meta = dict(model.state_dict(keep_vars=True))

    # Shapes first, from headers only: a wrong checkpoint fails before reading gigabytes.
    bad = []
    for name, entries in plan.items():
        for hub, t in entries:
            with safe_open(files[hub], framework="pt") as f:
                shape = tuple(f.get_slice(hub).get_shape())
            want = _expected_shape(meta[name], t)
            if shape != want:
                bad.append(f"{hub}: shape {list(shape)}, expected {list(want)}")
    if bad:
        raise ValueError(f"{len(bad)} tensor(s) have the wrong shape for this config: " + "; ".join(bad[:12]))

    by_file: dict[str, list[tuple[str, str, Target]]] = defaultdict(list)
    for name, entries in plan.items():
        for hub, t in entries:
            by_file[files[hub]].append((hub, name, t))
    state: dict[str, torch.Tensor] = {}
    total = sum(len(v) for v in by_file.values())
    bar = tqdm(total=total, desc="loading weights", unit="tensor", disable=not progress)
    for fname, items in by_file.items():
        with safe_open(fname, framework="pt") as f:
            for hub, name, t in items:
                want = torch.float32 if name.endswith(KEEP_FP32) else dtype
                chunks = _chunk_candidates(config, name)
                x = _read(f, hub, files, want, chunks)
                if t.expert is None:
                    state[name] = x
                else:
                    if name not in state:
                        state[name] = torch.empty(meta[name].shape, dtype=want, device="cpu")
                    state[name][t.expert].copy_(x)
                bar.update(1)
    bar.close()
    model.load_state_dict(state, strict=True, assign=True)
    model.rotary = RotaryTables(config)  # non-persistent buffers: computed, never stored
    model.eval()
    return model


def _chunk_candidates(config: MiMoConfig, name: str) -> tuple[int, ...]:
    """For per-head FP8 grids, try the layer's KV-head count first (the release's full-attention k_proj: 4 heads
    of 192 rows, scales [8, 32]), then power-of-two shards."""
    kind = SLIDING
    if ".layers." in name and ".mtp." not in name:
        layer = int(name.split(".layers.")[1].split(".")[0])
        kind = config.layer_types[layer] if layer < config.num_hidden_layers else SLIDING
    first = config.num_kv_heads(kind) if ("k_proj" in name or "v_proj" in name) else 0
    rest = tuple(n for n in (2, 4, 8, 16, 32, 64) if n != first)
    return ((first,) if first > 1 else ()) + rest
