"""The hub-name <-> parameter-name table.

Parameter names *are* the hub names, so the map is the identity except for the rules below.
Each rule is declarative: a pattern, what it maps to, and why.

| hub tensor                                      | parameter                                  |
|-------------------------------------------------|--------------------------------------------|
| ``...mlp.experts.{E}.gate_proj.weight``         | ``...mlp.experts.gate_proj[E]``            |
| ``...mlp.experts.{E}.up_proj.weight``           | ``...mlp.experts.up_proj[E]``              |
| ``...mlp.experts.{E}.down_proj.weight``         | ``...mlp.experts.down_proj[E]``            |
| ``...self_attn.sinks`` (transformers' in-memory name) | ``...self_attn.attention_sink_bias`` |
| ``<weight>_scale_inv``                          | consumed with its FP8 weight: a buffer of the linear, or |
|                                                 | ``...mlp.experts.<proj>_scale_inv[E]`` for experts |
| ``...rotary_emb.inv_freq``                      | ignored: recomputed from the config        |
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EXPERT = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$")
_STACKED = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<proj>gate_proj|up_proj|down_proj)$")
_STACKED_SCALE = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<proj>gate_proj|up_proj|down_proj)_scale_inv$")
_SINKS = re.compile(r"^(?P<prefix>.*\.self_attn)\.sinks$")
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
SCALE_SUFFIX = "_scale_inv"


@dataclass(frozen=True)
class Target:
    """Where one hub tensor goes: parameter ``name``, optionally into a slice of it."""

    name: str
    expert: int | None = None  # first index into a stacked expert tensor


def hub_to_param(hub_name: str) -> Target | None:
    """The parameter a hub tensor fills; None for tensors that carry no parameter (scales, inv_freq)."""
    if hub_name.endswith(SCALE_SUFFIX) or _IGNORED.search(hub_name):
        return None
    m = _EXPERT.match(hub_name)
    if m:
        return Target(f"{m['prefix']}.{m['proj']}", expert=int(m["e"]))
    m = _SINKS.match(hub_name)
    if m:
        return Target(f"{m['prefix']}.attention_sink_bias")
    return Target(hub_name)


def is_ignored(hub_name: str) -> bool:
    return bool(_IGNORED.search(hub_name))


def param_to_hub(name: str, n_experts: int) -> list[tuple[str, Target]]:
    """The hub tensors one parameter is written as (the inverse of :func:`hub_to_param`)."""
    m = _STACKED.match(name)
    if m:
        return [(f"{m['prefix']}.{e}.{m['proj']}.weight", Target(name, expert=e)) for e in range(n_experts)]
    m = _STACKED_SCALE.match(name)
    if m:
        return [(f"{m['prefix']}.{e}.{m['proj']}.weight{SCALE_SUFFIX}", Target(name, expert=e))
                for e in range(n_experts)]
    return [(name, Target(name))]
