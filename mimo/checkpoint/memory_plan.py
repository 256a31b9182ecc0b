"""What a checkpoint needs in memory, before any weight is read: ``mimo info --plan``.

Three sources, best first: the safetensors headers (exact dtypes and shapes, no data read); the tensor
names of ``model.safetensors.index.json`` when its shards are not there (a weight is FP8 when the index
lists its ``weight_scale_inv``; shapes come from config.json); config.json alone (its
``quantization_config`` says which weights the release layout stores as FP8).

Per-device figures follow the sharding rules vLLM and SGLang use for this architecture: q/k/v by head
(a KV head is replicated, never split, when there are more ranks than KV heads), o_proj and the dense
MLPs split over tensor-parallel ranks, embedding and head split by vocabulary, routed experts split by
expert (EP) or by their intermediate size (TP only), norms, router and MTP ``eh_proj`` replicated.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from mimo.checkpoint.export import quantized_in_release, scale_chunks
from mimo.checkpoint.hf_keys import SCALE_SUFFIX, param_to_hub
from mimo.config import FULL, SLIDING, MiMoConfig
from mimo.ops.fp8 import FP8, block_shape

_ROUTER = (".mlp.gate.weight", ".mlp.gate.e_score_correction_bias")
_LAYER = re.compile(r"^model\.(?P<mtp>mtp\.)?layers\.(?P<i>\d+)\.")


@dataclass(frozen=True)
class Stored:
    """One tensor as the checkpoint stores it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class Layout:
    """A parallel layout: attention (and the dense parts) split over ``tp`` ranks, replicated over ``dp``
    groups; routed experts split over ``ep`` ranks by expert (``ep == 1``: split over ``tp`` by their
    intermediate size)."""

    tp: int
    ep: int = 1
    dp: int = 1

    @property
    def devices(self) -> int:
        return self.tp * self.dp

    @property
    def mimo_runs_it(self) -> bool:
        """Whether mimo's engine runs this layout (``--tensor-parallel-size`` with or without
        ``--enable-expert-parallel``); DP attention is SGLang's, shown for its memory only."""
        return self.dp == 1

    @property
    def name(self) -> str:
        head = f"DP {self.dp} x TP {self.tp}" if self.dp > 1 else f"TP {self.tp}"
        return head + (f" + EP {self.ep}" if self.ep > 1 else "")

    def invalid(self, cfg: MiMoConfig) -> str | None:
        """Why this layout cannot shard the model (None: it can)."""
        if self.ep > 1 and self.ep != self.devices:
            return f"EP {self.ep} must use all {self.devices} devices"
        if self.ep > 1 and cfg.n_routed_experts % self.ep:
            return f"EP {self.ep} does not divide {cfg.n_routed_experts} experts"
        for kind in (FULL, SLIDING):
            heads, kv = cfg.num_heads(kind), cfg.num_kv_heads(kind)
            if heads % self.tp:
                return f"TP {self.tp} does not divide {heads} attention heads"
            if kv % self.tp and self.tp % kv:
                return f"TP {self.tp} neither divides nor is a multiple of {kv} KV heads"
        if self.ep == 1 and cfg.moe_intermediate_size % self.tp:
            return f"TP {self.tp} does not divide the experts' {cfg.moe_intermediate_size} intermediate size"
        return None


def stored_tensors(directory: str | None, cfg: MiMoConfig) -> tuple[list[Stored], str]:
    """Every tensor of the checkpoint with its stored dtype and shape, and where that knowledge came from."""
    from mimo.utils.safetensors_index import index_names, weight_files
    from mimo.utils.safetensors_io import headers

    if directory is not None:
        names = index_names(directory)
        try:
            files = weight_files(directory)
        except FileNotFoundError:  # no weights yet, or an index whose shards are not (all) here
            files = None
        if files:
            return [Stored(i.name, i.dtype, i.shape) for i in headers(files).values()], "the safetensors headers"
        if names is not None:
            return layout_from_config(cfg, set(names)), "config.json and the index's tensor names (no shard read)"
    return layout_from_config(cfg), "config.json (its quantization_config)"


def layout_from_config(cfg: MiMoConfig, names: set[str] | None = None) -> list[Stored]:
    """The tensors a checkpoint of this config holds in the release's layout. With ``names`` (an index's),
    a weight is FP8 exactly when its ``weight_scale_inv`` is listed; without, when ``quantization_config``
    asks for FP8 and the release quantizes that kind of weight (minus ``ignored_layers``)."""
    from mimo.checkpoint.loader import quantization_block
    from mimo.checkpoint.pretrained import MiMoForCausalLM

    q = cfg.quantization_config
    block = quantization_block(cfg) if q else block_shape(128)
    ignored = set((q or {}).get("ignored_layers") or [])
    wide = getattr(torch, cfg.torch_dtype or "float32")
    with torch.device("meta"):
        meta = MiMoForCausalLM(cfg)
    out = []
    for pname, t in meta.state_dict().items():
        for hub, target in param_to_hub(pname, cfg.n_routed_experts):
            shape = tuple(t.shape) if target.expert is None else tuple(t.shape[1:])
            if names is not None:
                fp8 = hub + SCALE_SUFFIX in names
            else:
                fp8 = bool(q) and quantized_in_release(hub) and len(shape) == 2 and \
                    hub.removesuffix(".weight") not in ignored
            if fp8:
                chunks = scale_chunks(cfg, hub)
                rows = chunks * math.ceil(shape[0] // chunks / block[0])
                out += [Stored(hub, FP8, shape), Stored(hub + SCALE_SUFFIX, torch.float32,
                                                        (rows, math.ceil(shape[1] / block[1])))]
            else:
                out.append(Stored(hub, torch.float32 if hub.endswith(_ROUTER) else wide, shape))
    return out


def bytes_by_dtype(tensors: list[Stored]) -> dict[str, tuple[int, int]]:
    """{dtype name: (bytes, tensors)}, largest first."""
    acc: dict[str, list[int]] = {}
    for t in tensors:
        a = acc.setdefault(str(t.dtype).removeprefix("torch."), [0, 0])
        a[0] += t.nbytes
        a[1] += 1
    return dict(sorted(((k, (v[0], v[1])) for k, v in acc.items()), key=lambda kv: -kv[1][0]))


def loaded_bytes(t: Stored, dtype: str) -> int:
    """Bytes this tensor takes once mimo loads it with ``dtype`` ("auto": as stored)."""
    if dtype == "auto":
        return t.nbytes
    if t.name.endswith(SCALE_SUFFIX):
        return 0  # an explicit dtype dequantizes: the scales are consumed
    if t.name.endswith(_ROUTER) or not t.dtype.is_floating_point:
        return t.nbytes  # the router stays fp32 whatever the dtype
    return t.numel * getattr(torch, dtype).itemsize


def _kind(cfg: MiMoConfig, name: str) -> str | None:
    m = _LAYER.match(name)
    if m is None:
        return None
    return SLIDING if m["mtp"] else cfg.layer_types[int(m["i"])]


def shard_fraction(cfg: MiMoConfig, name: str, layout: Layout) -> float:
    """The fraction of this tensor that the fullest rank of ``layout`` holds."""
    tp = layout.tp
    if ".mlp.experts." in name:
        return 1 / layout.ep if layout.ep > 1 else 1 / tp
    if name.startswith(("model.embed_tokens.", "lm_head.")):
        return 1 / tp
    kind = _kind(cfg, name)
    if kind is not None and (".k_proj." in name or ".v_proj." in name):
        return max(1 / tp, 1 / cfg.num_kv_heads(kind))  # more ranks than KV heads: each head on tp/kv ranks
    if any(f".{p}." in name or name.endswith(f".{p}") for p in
           ("q_proj", "o_proj", "attention_sink_bias", "gate_proj", "up_proj", "down_proj")):
        return 1 / tp
    return 1.0  # norms, router, MTP eh_proj and enorm/hnorm: replicated


def kv_bytes_per_device(cfg: MiMoConfig, layout: Layout, context: int, seqs: int, dtype_bytes: int = 2) -> int:
    """KV-cache bytes on the fullest rank: each DP group caches its share of the sequences, split by KV head
    over its TP ranks (a replicated head is cached on each of its ranks)."""
    per_group = math.ceil(seqs / layout.dp)
    total = 0
    n_full = sum(t == FULL for t in cfg.layer_types)
    n_slide = cfg.num_hidden_layers - n_full + cfg.num_mtp_layers
    for kind, layers, kept in ((FULL, n_full, context), (SLIDING, n_slide, min(context, cfg.sliding_window))):
        share = max(1 / layout.tp, 1 / cfg.num_kv_heads(kind))
        total += layers * cfg.kv_values_per_token(kind) * dtype_bytes * kept * share
    return int(total * per_group)


def layouts_for(devices: int) -> list[Layout]:
    """The layouts a user of ``devices`` accelerators would consider: TP, TP + EP, and (SGLang's recommended
    form) DP attention in 2 groups with EP over all devices."""
    out = [Layout(tp=devices)]
    if devices > 1:
        out.append(Layout(tp=devices, ep=devices))
    if devices >= 4 and devices % 2 == 0:
        out.append(Layout(tp=devices // 2, ep=devices, dp=2))
    return out


def per_device_bytes(cfg: MiMoConfig, tensors: list[Stored], layout: Layout, dtype: str = "auto") -> int:
    return int(sum(loaded_bytes(t, dtype) * shard_fraction(cfg, t.name, layout) for t in tensors))
