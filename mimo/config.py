"""MiMoConfig: one typed, validated view of a MiMo-V2-Flash ``config.json``.

Two spellings of the same model exist in the wild (the hub's config.json and transformers' ``MiMoV2FlashConfig``):

* the released hub spelling, read by vLLM, SGLang, llama.cpp and Megatron-Bridge
  (``hybrid_layer_pattern``, ``moe_layer_freq``, ``layernorm_epsilon``, ``rope_theta`` /
  ``swa_rope_theta``, ``sliding_window_size``, ``swa_*`` head fields, sink flags);
* transformers' native spelling (``layer_types``, ``mlp_layer_types``, ``rms_norm_eps``,
  ``rope_parameters``, ``sliding_window``).

Both parse into :class:`MiMoConfig`; :meth:`MiMoConfig.to_dict` writes both side by side,
consistent with each other.

Sliding window. ``MiMoConfig.sliding_window`` counts the keys a query may see *including
itself*, which is what transformers' mask means by ``sliding_window``. transformers maps the
hub's ``sliding_window_size: 128`` to ``sliding_window = 129`` (the query plus the 128 tokens
before it); we follow that mapping exactly so that our logits equal the reference's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

FULL = "full_attention"
SLIDING = "sliding_attention"
DENSE = "dense"
SPARSE = "sparse"

_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")

# Keys this module writes itself; anything else found in a config.json is carried through untouched.
_KNOWN_KEYS = {
    "architectures", "model_type", "auto_map", "transformers_version", "dtype", "torch_dtype",
    "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "v_head_dim",
    "swa_num_attention_heads", "swa_num_key_value_heads", "swa_head_dim", "swa_v_head_dim", "swa_qk_head_dim",
    "layer_types", "hybrid_layer_pattern", "mlp_layer_types", "moe_layer_freq",
    "sliding_window", "sliding_window_size",
    "add_swa_attention_sink_bias", "add_full_attention_sink_bias", "attention_value_scale",
    "rope_parameters", "rope_theta", "swa_rope_theta", "partial_rotary_factor", "rope_scaling",
    "rms_norm_eps", "layernorm_epsilon", "hidden_act", "attention_bias", "attention_dropout",
    "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "n_group", "topk_group",
    "norm_topk_prob", "routed_scaling_factor", "scoring_func", "topk_method",
    "max_position_embeddings", "initializer_range", "tie_word_embeddings", "use_cache",
    "num_nextn_predict_layers", "bos_token_id", "eos_token_id", "pad_token_id",
    "quantization_config", "output_router_logits",
}


@dataclass(frozen=True)
class MiMoConfig:
    """Architecture of a MiMo-V2-Flash-family model. Field names follow Hugging Face's."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int = 16384
    moe_intermediate_size: int = 2048
    head_dim: int = 192
    v_head_dim: int = 128
    swa_num_attention_heads: int | None = None  # None: same as num_attention_heads
    swa_num_key_value_heads: int | None = None  # None: 2 * num_key_value_heads (transformers' rule)
    swa_head_dim: int | None = None
    swa_v_head_dim: int | None = None
    layer_types: tuple[str, ...] = ()  # empty: full at layer 0 and every 6th layer
    mlp_layer_types: tuple[str, ...] = ()  # empty: dense first layer, MoE after
    sliding_window: int = 129  # keys visible to a query, itself included (transformers' meaning)
    add_swa_attention_sink_bias: bool = True
    add_full_attention_sink_bias: bool = False
    attention_value_scale: float = 0.707
    rope_theta: float = 5_000_000.0  # full-attention layers
    swa_rope_theta: float = 10_000.0  # sliding-window layers and MTP blocks
    partial_rotary_factor: float = 0.334
    swa_partial_rotary_factor: float | None = None
    rms_norm_eps: float = 1e-5
    hidden_act: str = "silu"
    n_routed_experts: int = 256
    num_experts_per_tok: int = 8
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    max_position_embeddings: int = 262144
    initializer_range: float = 0.02
    num_nextn_predict_layers: int = 0  # MTP blocks (the released checkpoint has 3)
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    quantization_config: dict | None = None
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        n = self.num_hidden_layers
        if not self.layer_types:
            object.__setattr__(self, "layer_types", default_layer_types(n))
        if not self.mlp_layer_types:
            object.__setattr__(self, "mlp_layer_types", (DENSE,) + (SPARSE,) * (n - 1))
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "mlp_layer_types", tuple(self.mlp_layer_types))
        for name, default in (
            ("swa_num_attention_heads", self.num_attention_heads),
            ("swa_num_key_value_heads", 2 * self.num_key_value_heads),
            ("swa_head_dim", self.head_dim),
            ("swa_v_head_dim", self.v_head_dim),
            ("swa_partial_rotary_factor", self.partial_rotary_factor),
        ):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that cannot describe a working model."""
        positive = (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "v_head_dim", "swa_num_attention_heads", "swa_num_key_value_heads", "swa_head_dim",
            "swa_v_head_dim", "sliding_window", "max_position_embeddings",
        )
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"config field '{name}' must be a positive integer, got {v!r}")
        n = self.num_hidden_layers
        if len(self.layer_types) != n:
            raise ValueError(
                f"config field 'layer_types' (or 'hybrid_layer_pattern') has {len(self.layer_types)} entries "
                f"but num_hidden_layers is {n}: give exactly one attention kind per layer"
            )
        bad = [t for t in self.layer_types if t not in (FULL, SLIDING)]
        if bad:
            raise ValueError(f"config field 'layer_types' has unknown kind {bad[0]!r}; expected {FULL!r} or {SLIDING!r}")
        if len(self.mlp_layer_types) != n:
            raise ValueError(
                f"config field 'mlp_layer_types' (or 'moe_layer_freq') has {len(self.mlp_layer_types)} entries "
                f"but num_hidden_layers is {n}: give exactly one MLP kind per layer"
            )
        bad = [t for t in self.mlp_layer_types if t not in (DENSE, SPARSE)]
        if bad:
            raise ValueError(f"config field 'mlp_layer_types' has unknown kind {bad[0]!r}; expected 'dense' or 'sparse'")
        for heads, kv, name in (
            (self.num_attention_heads, self.num_key_value_heads, "num_key_value_heads"),
            (self.swa_num_attention_heads, self.swa_num_key_value_heads, "swa_num_key_value_heads"),
        ):
            if heads % kv:
                raise ValueError(f"config field '{name}' ({kv}) must divide the number of query heads ({heads})")
        for kind in (FULL, SLIDING):
            rd = self.rotary_dim(kind)
            if rd % 2 or rd <= 0 or rd > self.qk_head_dim(kind):
                raise ValueError(
                    f"config field 'partial_rotary_factor' gives {rd} rotary dims for {kind} layers; "
                    f"it must be even and in (0, head_dim={self.qk_head_dim(kind)}]"
                )
        if self.hidden_act != "silu":
            raise ValueError(f"config field 'hidden_act' must be 'silu' (SwiGLU), got {self.hidden_act!r}")
        if any(t == DENSE for t in self.mlp_layer_types) or self.num_nextn_predict_layers:
            if self.intermediate_size <= 0:
                raise ValueError("config field 'intermediate_size' must be a positive integer")
        if any(t == SPARSE for t in self.mlp_layer_types):
            e, k = self.n_routed_experts, self.num_experts_per_tok
            if e <= 0 or self.moe_intermediate_size <= 0:
                raise ValueError("config fields 'n_routed_experts' and 'moe_intermediate_size' must be positive")
            if not 0 < k <= e:
                raise ValueError(f"config field 'num_experts_per_tok' ({k}) must be in [1, n_routed_experts={e}]")
            if self.n_group <= 0 or e % self.n_group:
                raise ValueError(f"config field 'n_group' ({self.n_group}) must divide n_routed_experts ({e})")
            if not 0 < self.topk_group <= self.n_group:
                raise ValueError(f"config field 'topk_group' ({self.topk_group}) must be in [1, n_group={self.n_group}]")
            if self.n_group > 1 and e // self.n_group < 2:
                raise ValueError("config field 'n_group' leaves fewer than 2 experts per group (group score = top-2 sum)")
            if k > self.topk_group * (e // self.n_group):
                raise ValueError("config field 'num_experts_per_tok' exceeds the experts in the selected groups")
        if self.num_nextn_predict_layers < 0:
            raise ValueError("config field 'num_nextn_predict_layers' must be >= 0")

    # ------------------------------------------------------------------ derived facts
    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    def is_moe(self, layer: int) -> bool:
        return self.mlp_layer_types[layer] == SPARSE

    def num_heads(self, kind: str) -> int:
        return self.swa_num_attention_heads if kind == SLIDING else self.num_attention_heads

    def num_kv_heads(self, kind: str) -> int:
        return self.swa_num_key_value_heads if kind == SLIDING else self.num_key_value_heads

    def qk_head_dim(self, kind: str) -> int:
        return self.swa_head_dim if kind == SLIDING else self.head_dim

    def v_dim(self, kind: str) -> int:
        return self.swa_v_head_dim if kind == SLIDING else self.v_head_dim

    def theta(self, kind: str) -> float:
        return self.swa_rope_theta if kind == SLIDING else self.rope_theta

    def rotary_dim(self, kind: str) -> int:
        factor = self.swa_partial_rotary_factor if kind == SLIDING else self.partial_rotary_factor
        return int(self.qk_head_dim(kind) * factor)  # floor, as every reference does: int(192 * 0.334) = 64

    def has_sinks(self, kind: str) -> bool:
        return self.add_swa_attention_sink_bias if kind == SLIDING else self.add_full_attention_sink_bias

    def window(self, kind: str) -> int | None:
        """Keys a query of this kind may see, itself included (None: unbounded)."""
        return self.sliding_window if kind == SLIDING else None

    @property
    def num_mtp_layers(self) -> int:
        return self.num_nextn_predict_layers

    @property
    def moe_layers(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if self.is_moe(i)]

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    def kv_values_per_token(self, kind: str) -> int:
        """Cached K and V numbers per token for one layer of this kind."""
        return self.num_kv_heads(kind) * (self.qk_head_dim(kind) + self.v_dim(kind))

    def replace(self, **changes: Any) -> MiMoConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, d: dict) -> MiMoConfig:
        """Parse a config dict in the hub spelling, transformers' spelling, or both."""
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
        missing = [k for k in _REQUIRED if d.get(k) is None]
        if missing:
            raise ValueError(f"config is missing required field(s): {', '.join(missing)}")
        n = d["num_hidden_layers"]
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"config field 'num_hidden_layers' must be a positive integer, got {n!r}")
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in d and f.name not in ("layer_types", "mlp_layer_types", "extra", "sliding_window"):
                kw[f.name] = d[f.name]

        kw["layer_types"] = _parse_layer_types(d, n)
        kw["mlp_layer_types"] = _parse_mlp_types(d, n)
        if "layernorm_epsilon" in d and "rms_norm_eps" not in d:
            kw["rms_norm_eps"] = d["layernorm_epsilon"]
        if d.get("routed_scaling_factor") is None:
            kw["routed_scaling_factor"] = 1.0
        if d.get("attention_value_scale") is None:
            kw["attention_value_scale"] = 1.0 if "attention_value_scale" in d else 0.707
        if d.get("torch_dtype") is None and d.get("dtype") is not None:
            kw["torch_dtype"] = d["dtype"]
        # transformers' rule: the hub's sliding_window_size W means a window of W + 1 keys.
        if d.get("sliding_window_size") is not None:
            kw["sliding_window"] = int(d["sliding_window_size"]) + 1
        elif d.get("sliding_window") is not None:
            kw["sliding_window"] = int(d["sliding_window"])
        kw.update(_parse_rope(d))
        if d.get("rope_scaling") not in (None, {}):
            raise ValueError("config field 'rope_scaling' is not supported (MiMo-V2-Flash uses plain RoPE); set it to null")
        if d.get("attention_bias"):
            raise ValueError("config field 'attention_bias' must be false: MiMo-V2-Flash projections have no bias")
        if d.get("tie_word_embeddings"):
            raise ValueError("config field 'tie_word_embeddings' must be false: MiMo-V2-Flash has an untied lm_head")
        if d.get("n_shared_experts"):
            raise ValueError("config field 'n_shared_experts' must be null or 0: MiMo-V2-Flash has no shared expert")
        if d.get("scoring_func", "sigmoid") != "sigmoid":
            raise ValueError(f"config field 'scoring_func' must be 'sigmoid', got {d['scoring_func']!r}")
        if d.get("num_nextn_predict_layers") is None:
            kw.pop("num_nextn_predict_layers", None)
        if "swa_num_key_value_heads" not in d and d.get("swa_num_key_value_heads") is None:
            kw.pop("swa_num_key_value_heads", None)
        if "head_dim" not in d and d.get("swa_qk_head_dim") is not None:
            kw["head_dim"] = d["swa_qk_head_dim"]
        kw["extra"] = {k: v for k, v in d.items() if k not in _KNOWN_KEYS}
        try:
            return cls(**kw)
        except TypeError as e:  # a field of the wrong JSON type (e.g. a string where a number belongs)
            raise ValueError(f"config has a field of the wrong type: {e}") from e

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> MiMoConfig:
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(d)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> MiMoConfig:
        """Read ``config.json`` from a model directory (or the file itself).

        The released config has no MTP-depth field; when it is absent the number of
        ``model.mtp.layers.N`` blocks is counted from the safetensors headers.
        """
        path = os.fspath(path)
        cfg_path = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.exists(cfg_path):
            raise FileNotFoundError(f"no config.json at {path!r}: is this a model directory in the Hugging Face layout?")
        with open(cfg_path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{cfg_path} is not valid JSON: {e}") from e
        cfg = cls.from_dict(d)
        if d.get("num_nextn_predict_layers") is None and os.path.isdir(path):
            from mimo.utils.safetensors_index import count_mtp_layers

            n_mtp = count_mtp_layers(path)
            if n_mtp:
                cfg = cfg.replace(num_nextn_predict_layers=n_mtp)
        return cfg

    # ------------------------------------------------------------------ writing
    def transformers_compatible(self) -> list[str]:
        """Reasons transformers' native MiMoV2Flash port cannot express this config (empty: it can)."""
        why = []
        if self.swa_num_key_value_heads != 2 * self.num_key_value_heads:
            why.append("transformers derives swa_num_key_value_heads as 2 * num_key_value_heads")
        if self.swa_num_attention_heads != self.num_attention_heads:
            why.append("transformers uses one num_attention_heads for both kinds")
        if (self.swa_head_dim, self.swa_v_head_dim) != (self.head_dim, self.v_head_dim):
            why.append("transformers uses one head_dim / v_head_dim for both kinds")
        if not self.add_swa_attention_sink_bias or self.add_full_attention_sink_bias:
            why.append("transformers puts sinks on sliding layers only")
        return why

    def to_dict(self) -> dict:
        """Both spellings side by side: the hub's (vLLM, SGLang, llama.cpp) and transformers'."""
        pattern = [1 if t == SLIDING else 0 for t in self.layer_types]
        d: dict[str, Any] = {
            "architectures": ["MiMoV2FlashForCausalLM"],
            "model_type": "mimo_v2_flash",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "moe_intermediate_size": self.moe_intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "v_head_dim": self.v_head_dim,
            "swa_num_attention_heads": self.swa_num_attention_heads,
            "swa_num_key_value_heads": self.swa_num_key_value_heads,
            "swa_head_dim": self.swa_head_dim,
            "swa_v_head_dim": self.swa_v_head_dim,
            # hub spelling
            "hybrid_layer_pattern": pattern,
            "moe_layer_freq": [1 if t == SPARSE else 0 for t in self.mlp_layer_types],
            "sliding_window_size": self.sliding_window - 1,
            "add_swa_attention_sink_bias": self.add_swa_attention_sink_bias,
            "add_full_attention_sink_bias": self.add_full_attention_sink_bias,
            "layernorm_epsilon": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "swa_rope_theta": self.swa_rope_theta,
            "partial_rotary_factor": self.partial_rotary_factor,
            "n_shared_experts": None,
            "scoring_func": "sigmoid",
            "topk_method": "noaux_tc",
            "num_nextn_predict_layers": self.num_nextn_predict_layers,
            # transformers' spelling (rope_parameters, layer_types, ...) — the same facts
            "layer_types": list(self.layer_types),
            "mlp_layer_types": list(self.mlp_layer_types),
            "sliding_window": self.sliding_window,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {
                FULL: {"rope_type": "default", "rope_theta": self.rope_theta,
                       "partial_rotary_factor": self.partial_rotary_factor},
                SLIDING: {"rope_type": "default", "rope_theta": self.swa_rope_theta,
                          "partial_rotary_factor": self.swa_partial_rotary_factor},
            },
            # shared
            "attention_value_scale": self.attention_value_scale,
            "hidden_act": self.hidden_act,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "n_routed_experts": self.n_routed_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "n_group": self.n_group,
            "topk_group": self.topk_group,
            "norm_topk_prob": self.norm_topk_prob,
            "routed_scaling_factor": self.routed_scaling_factor,
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "tie_word_embeddings": False,
            "use_cache": True,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }
        if self.swa_partial_rotary_factor != self.partial_rotary_factor:
            d["swa_partial_rotary_factor"] = self.swa_partial_rotary_factor
        if self.torch_dtype:
            d["torch_dtype"] = self.torch_dtype
        if self.quantization_config is not None:
            d["quantization_config"] = self.quantization_config
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    def save(self, directory: str | os.PathLike) -> None:
        why = self.transformers_compatible()
        if why:
            logger.warning("transformers cannot load this config faithfully: %s", "; ".join(why))
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    save_pretrained = save


def default_layer_types(n: int) -> tuple[str, ...]:
    """Full attention at layer 0 and every 6th layer (5, 11, ...), sliding window elsewhere."""
    return tuple(FULL if i == 0 or (i + 1) % 6 == 0 else SLIDING for i in range(n))


def _parse_layer_types(d: dict, n: int) -> tuple[str, ...]:
    native = d.get("layer_types")
    hub = d.get("hybrid_layer_pattern")
    from_hub = None
    if hub is not None:
        if not isinstance(hub, list) or any(x not in (0, 1) for x in hub):
            raise ValueError("config field 'hybrid_layer_pattern' must be a list of 0 (full) and 1 (sliding window)")
        from_hub = tuple(SLIDING if x == 1 else FULL for x in hub)
    if native is not None:
        if not isinstance(native, list):
            raise ValueError("config field 'layer_types' must be a list of attention kinds")
        if from_hub is not None and tuple(native) != from_hub:
            raise ValueError("config fields 'layer_types' and 'hybrid_layer_pattern' disagree; give one or make them equal")
        return tuple(native)
    return from_hub if from_hub is not None else default_layer_types(n)


def _parse_mlp_types(d: dict, n: int) -> tuple[str, ...]:
    native = d.get("mlp_layer_types")
    hub = d.get("moe_layer_freq")
    from_hub = None
    if hub is not None:
        if isinstance(hub, int) and not isinstance(hub, bool):  # DeepSeek-style frequency, dense first layer(s)
            first_dense = d.get("first_k_dense_replace", 1)
            from_hub = tuple(SPARSE if i >= first_dense and i % hub == 0 else DENSE for i in range(n))
        elif isinstance(hub, list) and all(x in (0, 1) for x in hub):
            from_hub = tuple(SPARSE if x == 1 else DENSE for x in hub)
        else:
            raise ValueError("config field 'moe_layer_freq' must be a list of 0 (dense) and 1 (MoE)")
    if native is not None:
        if not isinstance(native, list):
            raise ValueError("config field 'mlp_layer_types' must be a list of 'dense' / 'sparse'")
        if from_hub is not None and tuple(native) != from_hub:
            raise ValueError("config fields 'mlp_layer_types' and 'moe_layer_freq' disagree; give one or make them equal")
        return tuple(native)
    if from_hub is not None:
        return from_hub
    return (DENSE,) + (SPARSE,) * (n - 1)


def _parse_rope(d: dict) -> dict:
    out: dict[str, Any] = {}
    rp = d.get("rope_parameters")
    if rp is not None:
        if not isinstance(rp, dict):
            raise ValueError("config field 'rope_parameters' must be an object keyed by attention kind")
        # transformers also accepts one flat dict for all kinds
        per_kind = rp if (FULL in rp or SLIDING in rp) else {FULL: rp, SLIDING: rp}
        for kind, theta_key, prf_key in ((FULL, "rope_theta", "partial_rotary_factor"),
                                         (SLIDING, "swa_rope_theta", "swa_partial_rotary_factor")):
            p = per_kind.get(kind)
            if p is None:
                continue
            if p.get("rope_type", "default") != "default":
                raise ValueError(f"config field 'rope_parameters.{kind}.rope_type' must be 'default', got {p['rope_type']!r}")
            if "rope_theta" in p:
                out[theta_key] = float(p["rope_theta"])
            out[prf_key] = float(p.get("partial_rotary_factor", 0.334))
        for hub_key, key in (("rope_theta", "rope_theta"), ("swa_rope_theta", "swa_rope_theta")):
            if d.get(hub_key) is not None and key in out and float(d[hub_key]) != out[key]:
                raise ValueError(f"config fields '{hub_key}' and 'rope_parameters' disagree ({d[hub_key]} vs {out[key]})")
        return out
    if d.get("rope_theta") is not None:
        out["rope_theta"] = float(d["rope_theta"])
    if d.get("swa_rope_theta") is not None:
        out["swa_rope_theta"] = float(d["swa_rope_theta"])
    if d.get("partial_rotary_factor") is not None:
        out["partial_rotary_factor"] = float(d["partial_rotary_factor"])
    if d.get("swa_partial_rotary_factor") is not None:
        out["swa_partial_rotary_factor"] = float(d["swa_partial_rotary_factor"])
    return out


# ---------------------------------------------------------------------- presets
def _flash() -> MiMoConfig:
    return MiMoConfig(
        vocab_size=152576, hidden_size=4096, num_hidden_layers=48, num_attention_heads=64, num_key_value_heads=4,
        intermediate_size=16384, moe_intermediate_size=2048, head_dim=192, v_head_dim=128,
        swa_num_attention_heads=64, swa_num_key_value_heads=8, swa_head_dim=192, swa_v_head_dim=128,
        sliding_window=129, n_routed_experts=256, num_experts_per_tok=8, num_nextn_predict_layers=3,
        max_position_embeddings=262144, eos_token_id=151645, pad_token_id=151643, torch_dtype="bfloat16",
        quantization_config={  # as released: FP8 e4m3 in 128x128 blocks, attention output projections in bf16
            "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128],
            "ignored_layers": [f"model.layers.{i}.self_attn.o_proj" for i in range(48)]},
    )


def _tiny() -> MiMoConfig:
    """A few-kilobyte model for tests: every feature of the real one, at toy sizes."""
    return MiMoConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
        intermediate_size=64, moe_intermediate_size=16, head_dim=24, v_head_dim=16, sliding_window=9,
        layer_types=(FULL, SLIDING, SLIDING, FULL), n_routed_experts=8, num_experts_per_tok=2,
        num_nextn_predict_layers=3, max_position_embeddings=4096, eos_token_id=1,
    )


def _bench() -> MiMoConfig:
    """The engine benchmark shape: 12 layers, hidden 512, 64 experts top-8, window 128, vocab 32000."""
    return MiMoConfig(
        vocab_size=32000, hidden_size=512, num_hidden_layers=12, num_attention_heads=8, num_key_value_heads=2,
        intermediate_size=1536, moe_intermediate_size=256, head_dim=96, v_head_dim=64, sliding_window=129,
        n_routed_experts=64, num_experts_per_tok=8, num_nextn_predict_layers=3, max_position_embeddings=32768,
        eos_token_id=1,
    )


def _nano() -> MiMoConfig:
    """mimo-nano, the shipped default model: the released shape in small, trained on 2 CPU cores.

    Full attention at layer 0 and 5, sliding window (the hub's 128 + the query) with sinks
    elsewhere, a dense first layer, sigmoid-routed MoE (8 experts, top-2) after it, three MTP
    blocks and the 4096-token byte-level BPE (``<|endoftext|>`` = 0).
    """
    return MiMoConfig(
        vocab_size=4096, hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=1,
        intermediate_size=768, moe_intermediate_size=256, head_dim=64, v_head_dim=48,
        swa_num_key_value_heads=2, sliding_window=129, partial_rotary_factor=0.375,  # 24 of 64 dims: ~1/3, even
        n_routed_experts=8, num_experts_per_tok=2,
        num_nextn_predict_layers=3, max_position_embeddings=4096, eos_token_id=0, pad_token_id=0,
        torch_dtype="bfloat16",
    )


PRESETS = {"flash": _flash, "nano": _nano, "tiny": _tiny, "bench": _bench}


def preset(name: str) -> MiMoConfig:
    """A named configuration: 'flash' (the released model) or one of the small ones."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}") from None
