"""Strict loading of a Hugging Face model directory into :class:`mimo.model.CausalLM`, each tensor kept as
stored (``dtype="auto"``, the default) or converted (``"float32"``, ``"bfloat16"``).

* The module tree is built on the ``meta`` device and every tensor is read once: never two copies.
  Tensors kept as stored are views of the files' memory maps (zero-copy: pages come in as they are
  touched); tensors that are stacked (routed experts, one hub tensor each) or converted are read straight
  into their destination (:mod:`mimo.utils.safetensors_io`), so no file page stays mapped for them.
  ``mmap=False`` copies everything into the process's own memory instead (llama.cpp's ``--no-mmap``).
* Strict: every parameter must be filled and every tensor in the files must land somewhere
  (or be covered by a rule in :mod:`mimo.checkpoint.hf_keys`); otherwise a ``ValueError``
  lists the offending names. Shapes are checked against the config before any data is read.
* FP8 ``float8_e4m3fn`` weights come with ``weight_scale_inv`` block scales (``quantization_config``:
  ``fmt`` e4m3, any ``weight_block_size``; a grid restarting per KV head is recognised by its shape).
  With ``dtype="auto"`` they stay FP8 (a weight with a NaN code is refused: the kernels assume none);
  with an explicit dtype they are dequantized (:mod:`mimo.ops.fp8`).
* Router weights and the balancing bias are fp32 whatever ``dtype`` is asked for.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from mimo.checkpoint.hf_keys import SCALE_SUFFIX, Target, hub_to_param, is_ignored
from mimo.checkpoint.slices import Slice
from mimo.config import SLIDING, MiMoConfig
from mimo.model.causal_lm import CausalLM, RotaryTables
from mimo.model.layers import Experts, Linear
from mimo.ops.fp8 import FP8, block_shape, check_scale_cols, dequantize, nan_codes, nan_scratch, scale_rows
from mimo.utils.safetensors_index import weight_files
from mimo.utils.safetensors_io import SafetensorsFile, TensorInfo, headers

logger = logging.getLogger(__name__)

KEEP_FP32 = (".mlp.gate.weight", ".mlp.gate.e_score_correction_bias")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: torch.dtype | str | None, config: MiMoConfig) -> torch.dtype | None:
    """The dtype every weight is converted to, or ``None`` for ``"auto"`` (each tensor as stored)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return None
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; choose 'auto' (as stored) or one of {', '.join(_DTYPES)}") \
            from None


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


def quantization_block(config: MiMoConfig) -> tuple[int, int]:
    """The checkpoint's ``weight_block_size`` (128x128 when the config says none); other formats refused."""
    q = config.quantization_config or {}
    fmt = q.get("fmt", "e4m3")
    if q.get("quant_method", "fp8") != "fp8" or fmt not in ("e4m3", "float8_e4m3fn"):
        raise ValueError(f"quantization_config {q.get('quant_method')!r}/{fmt!r} is not supported: mimo reads FP8 "
                         "e4m3 with block scales (quant_method 'fp8', fmt 'e4m3')")
    return block_shape(q.get("weight_block_size") or 128)


class _Reader:
    """The directory's files, opened once each, and how to get one tensor out of them."""

    def __init__(self, files: dict[str, str], infos: dict[str, TensorInfo], mmap_ok: bool) -> None:
        self.files, self.infos = files, infos
        self._open = {p: SafetensorsFile(p, mmap_ok) for p in sorted(set(files.values()))}
        self.mapped = mmap_ok  # views are of the files' memory maps (else private reads of whole tensors)
        self.scratch = nan_scratch()  # one for the whole checkpoint

    def info(self, hub: str) -> TensorInfo:
        return self.infos[hub]

    def view(self, hub: str) -> torch.Tensor:
        return self._open[self.files[hub]].view(self.infos[hub])

    def read(self, hub: str) -> torch.Tensor:
        return self._open[self.files[hub]].read(self.infos[hub])

    def read_into(self, hub: str, out: torch.Tensor) -> torch.Tensor:
        return self._open[self.files[hub]].read_into(self.infos[hub], out)

    def read_rows(self, hub: str, begin: int, end: int) -> torch.Tensor:
        """Rows ``begin:end`` of a tensor, read without the rest: how a tensor-parallel rank reads its shard."""
        if hub + SCALE_SUFFIX in self.files:
            raise NotImplementedError(f"{hub}: reading a slice of an FP8 tensor needs its scale blocks sliced too")
        return self._open[self.files[hub]].read_rows(self.infos[hub], begin, end)

    def close(self) -> None:
        for f in self._open.values():
            f.close()


def _scale(reader: _Reader, hub: str, info: TensorInfo) -> torch.Tensor | None:
    """The block scales of ``hub`` when it is FP8 (an error when they are missing or it is not FP8)."""
    name = hub + SCALE_SUFFIX
    if info.dtype == FP8:
        if name not in reader.files:
            raise ValueError(f"FP8 tensor {hub} has no {name}: FP8 weights must come with their block scales")
        return reader.read(name).float()
    if info.dtype == torch.float8_e5m2:
        raise ValueError(f"{hub} is float8_e5m2; mimo reads FP8 e4m3 (the release's format)")
    if name in reader.files:
        raise ValueError(f"{name} given for {hub}, which is {info.dtype}, not FP8")
    return None


def _fp8_rows(hub: str, info: TensorInfo, scale: torch.Tensor, block: tuple[int, int],
              chunks: tuple[int, ...]) -> torch.Tensor:
    rows, cols = info.shape
    try:
        check_scale_cols(cols, scale, block[1])
        return scale_rows(rows, scale.shape[0], block[0], chunks)
    except ValueError as e:
        raise ValueError(f"{hub}: {e}") from None


def _check_codes(hub: str, weight: torch.Tensor, scratch: tuple[torch.Tensor, torch.Tensor]) -> None:
    bad = nan_codes(weight, scratch)
    if bad:
        raise ValueError(f"FP8 tensor {hub} holds {bad} NaN code(s) (0x7f/0xff); mimo's FP8 kernels assume finite "
                         "weights, so this checkpoint is refused")


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` in place of the meta parameter or buffer ``name`` (floating weights stay trainable unless
    FP8)."""
    prefix, _, leaf = name.rpartition(".")
    module = model.get_submodule(prefix) if prefix else model
    if leaf in module._parameters:
        grad = tensor.is_floating_point() and tensor.dtype != FP8
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=grad)
    else:
        module._buffers[leaf] = tensor


def load_pretrained(
    path: str | os.PathLike,
    dtype: torch.dtype | str | None = "auto",
    model_cls: type[CausalLM] = CausalLM,
    config: MiMoConfig | None = None,
    progress: bool = False,
    mmap: bool = True,
    shard: Callable[[CausalLM], dict[str, Slice]] | None = None,
) -> CausalLM:
    """Build ``model_cls`` from a hub-layout directory; see the module docstring for the rules.

    ``shard`` (a parallel plan, :func:`mimo.parallel.load_sharded`) turns the full-size meta model into one
    rank's part and returns the :class:`Slice` of the checkpoint each split parameter holds; only those slices
    are read (the checkpoint is still checked whole, from its headers)."""
    path = os.fspath(path)
    config = config or MiMoConfig.from_pretrained(path)
    target = resolve_dtype(dtype, config)
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
    infos = headers(files)

    # Shapes first, from headers only: a wrong checkpoint fails before reading gigabytes.
    bad = []
    for name, entries in plan.items():
        for hub, t in entries:
            want = _expected_shape(meta[name], t)
            if infos[hub].shape != want:
                bad.append(f"{hub}: shape {list(infos[hub].shape)}, expected {list(want)}")
    if bad:
        raise ValueError(f"{len(bad)} tensor(s) have the wrong shape for this config: " + "; ".join(bad[:12]))
    block = quantization_block(config) if any(i.dtype == FP8 for i in infos.values()) else (128, 128)

    slices = shard(model) if shard is not None else {}
    meta = dict(model.state_dict(keep_vars=True))  # the shapes this process holds
    reader = _Reader(files, infos, mmap)
    bar = tqdm(total=sum(len(v) for v in plan.values()), desc="loading weights", unit="tensor", disable=not progress)
    try:
        for name, entries in plan.items():
            want = torch.float32 if name.endswith(KEEP_FP32) else target
            sl = slices.get(name)
            if entries[0][1].expert is None:
                _load_one(model, reader, name, entries[0][0], want, block, _chunk_candidates(config, name), sl)
            else:
                _load_experts(model, reader, name, entries, meta[name].shape, want, block, sl)
            bar.update(len(entries))
    finally:
        bar.close()
        reader.close()
    if slices:
        _one_dtype_per_experts(model)
    model.rotary = RotaryTables(config)  # non-persistent buffers: computed, never stored
    missing = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if missing:
        raise AssertionError(f"tensors left unloaded: {missing[:8]}")  # _plan's strictness should make this impossible
    model.eval()
    return model


def _wide(model: CausalLM) -> torch.dtype:
    """What an FP8 slice that cannot stay FP8 is held in: the checkpoint's own ``torch_dtype`` (the dtype it was
    quantized from; bf16 for the release)."""
    return _DTYPES.get(model.config.torch_dtype or "bfloat16", torch.bfloat16)


def _aligned(start: int, size: int, block: int) -> bool:
    """Whether a slice ``[start, start + size)`` reads its scales as a grid of its own: local index ``i`` in
    block ``i // block`` of the scales from ``start // block`` on (the start on a block boundary, or the whole
    slice inside one block)."""
    return start % block == 0 or start % block + size <= block


def _narrowed(t: torch.Tensor, sl: Slice | None, copy: bool) -> torch.Tensor:
    """``t``'s slice: a view for rows (of a memory map: only its pages are ever read), a copy for columns, and
    a copy whenever ``copy`` (``t`` is a private read of the whole tensor that must not stay alive)."""
    if sl is None or sl.dim is None:
        return t
    part = t.narrow(sl.dim, sl.start, sl.size)
    if sl.dim > 0:
        return part.contiguous()
    return part.clone() if copy else part


def _load_one(model: CausalLM, reader: _Reader, name: str, hub: str, want: torch.dtype | None,
              block: tuple[int, int], chunks: tuple[int, ...], sl: Slice | None = None) -> None:
    info = reader.info(hub)
    scale = _scale(reader, hub, info)
    private = not reader.mapped
    if scale is None:
        t = _narrowed(reader.view(hub), sl, private)
        if want is not None and want != info.dtype:
            t = t.to(want)
        _assign(model, name, t)  # as stored and whole: zero-copy
        return
    rows = _fp8_rows(hub, info, scale, block, chunks)
    prefix = name.rpartition(".")[0]
    module = model.get_submodule(prefix)
    if sl is not None and sl.dim == 0:  # rows: their own scale rows, whatever the grid (per head or uniform)
        rows = rows[sl.start : sl.stop]
    if sl is not None and sl.dim == 1 and want is None and not _aligned(sl.start, sl.size, block[1]):
        want = _wide(model)
        logger.warning("%s: columns %d:%d of this rank do not start on a %d-column scale block: held in %s",
                       hub, sl.start, sl.stop, block[1], want)
    if want is None and isinstance(module, Linear) and name.endswith(".weight"):
        weight = _narrowed(reader.view(hub), sl, private)
        if sl is not None and sl.dim == 1:
            scale = scale[:, sl.start // block[1] : math.ceil(sl.stop / block[1])].contiguous()
        _check_codes(hub, weight, reader.scratch)
        module.set_fp8(weight, scale, rows, block)
        return
    if want is None:  # an FP8 tensor where mimo computes in another dtype: dequantize to the model's own
        want = torch.bfloat16
        logger.warning("%s is FP8 but %s cannot compute with FP8 weights: dequantized to bfloat16", hub, prefix)
    w = reader.view(hub)
    if sl is not None and sl.dim == 0:
        _assign(model, name, dequantize(w[sl.start : sl.stop], scale, rows, block[1], want))
    else:
        _assign(model, name, _narrowed(dequantize(w, scale, rows, block[1], want), sl, True))


def _load_experts(model: CausalLM, reader: _Reader, name: str, entries: list[tuple[str, Target]],
                  shape: torch.Size, want: torch.dtype | None, block: tuple[int, int], sl: Slice | None = None) -> None:
    """One stacked expert tensor from its per-expert hub tensors, each read straight into its slot (with ``sl``:
    only the experts it names, each narrowed to its slice)."""
    first = 0
    if sl is not None and sl.experts is not None:
        entries = [(hub, t) for hub, t in entries if t.expert in sl.experts]
        first = sl.experts.start
    stored = {reader.info(hub).dtype for hub, _ in entries}
    if len(stored) > 1:
        raise ValueError(f"the experts of {name} are stored in different dtypes: {sorted(map(str, stored))}")
    (dtype,) = stored
    prefix, _, proj = name.rpartition(".")
    module = model.get_submodule(prefix)
    part = sl if sl is not None and sl.dim is not None else None
    if dtype != FP8:
        out = torch.empty(shape, dtype=want or dtype, device="cpu")
        for hub, t in entries:
            if out.dtype == dtype and part is None:
                reader.read_into(hub, out[t.expert - first])
            else:
                out[t.expert - first].copy_(_narrowed(reader.view(hub), part, False))
        _assign(model, name, out)
        return
    scales = {t.expert - first: _scale(reader, hub, reader.info(hub)) for hub, t in entries}
    if len({tuple(s.shape) for s in scales.values()}) > 1:
        raise ValueError(f"the experts of {name} have block-scale grids of different shapes")
    rows = _fp8_rows(entries[0][0], reader.info(entries[0][0]), scales[0], block, ())
    if part is not None:
        rows = rows[part.start : part.stop] if part.dim == 0 else rows
        if want is None and not _aligned(part.start, part.size, block[part.dim]):
            want = _wide(model)  # the kernels read a uniform grid from the slice's first row / column on
            logger.warning("%s: this rank's slice %d:%d does not start on a scale block: held in %s", name,
                           part.start, part.stop, want)
    if want is None and isinstance(module, Experts):
        out = torch.empty(shape, dtype=FP8, device="cpu")
        for hub, t in entries:
            if part is None:
                _check_codes(hub, reader.read_into(hub, out[t.expert - first]), reader.scratch)
            else:
                out[t.expert - first].copy_(_narrowed(reader.view(hub), part, False))
                _check_codes(hub, out[t.expert - first], reader.scratch)
        _assign(model, name, out)
        grid = torch.stack([scales[e] for e in range(shape[0])])
        if part is not None:
            b = block[part.dim]
            grid = grid.narrow(part.dim + 1, part.start // b, math.ceil(part.stop / b) - part.start // b).contiguous()
        module._buffers[f"{proj}_scale_inv"] = grid
        module.block = block
        return
    out = torch.empty(shape, dtype=want or torch.bfloat16, device="cpu")
    for hub, t in entries:
        w = reader.view(hub)
        if part is not None and part.dim == 0:
            out[t.expert - first] = dequantize(w[part.start : part.stop], scales[t.expert - first], rows, block[1],
                                               out.dtype)
        else:
            full = dequantize(w, scales[t.expert - first], rows, block[1], out.dtype)
            out[t.expert - first] = _narrowed(full, part, False)
    _assign(model, name, out)


def _one_dtype_per_experts(model: CausalLM) -> None:
    """A split expert projection that could not stay FP8 (its slice cuts a scale block) takes the others of
    its layer along: the experts compute with one dtype."""
    for m in model.modules():
        if isinstance(m, Experts):
            kinds = {getattr(m, p).dtype for p in Experts.PROJECTIONS}
            if FP8 in kinds and len(kinds) > 1:
                (wide,) = kinds - {FP8}
                for p in Experts.PROJECTIONS:
                    w, scale = getattr(m, p), getattr(m, f"{p}_scale_inv")
                    if w.dtype == FP8:
                        rows = scale_rows(w.shape[1], scale.shape[1], m.block[0])
                        setattr(m, p, nn.Parameter(torch.stack([dequantize(w[e], scale[e], rows, m.block[1], wide)
                                                                for e in range(w.shape[0])]), requires_grad=False))
                        setattr(m, f"{p}_scale_inv", None)


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
