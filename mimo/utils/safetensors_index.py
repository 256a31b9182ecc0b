"""Reading what a Hugging Face model directory holds without loading any tensor.

A directory holds either ``model.safetensors`` or shards listed by
``model.safetensors.index.json``. Pickle checkpoints (``*.bin``, ``*.pt``) are refused:
unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import os
import re

from safetensors import safe_open

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_MTP_KEY = re.compile(r"^model\.mtp\.layers\.(\d+)\.")


def weight_files(directory: str) -> dict[str, str]:
    """Map every tensor name to the safetensors file (absolute path) that holds it."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"model directory {directory!r} does not exist")
    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no 'weight_map' object")
        out = {}
        for name, fname in weight_map.items():
            path = os.path.join(directory, fname)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{index} lists {fname!r} for {name!r}, but the file is missing")
            out[name] = path
        return out
    if os.path.exists(single):
        with safe_open(single, framework="pt") as f:
            return {k: single for k in f.keys()}
    shards = sorted(p for p in os.listdir(directory) if p.endswith(".safetensors"))
    if shards:
        out = {}
        for s in shards:
            with safe_open(os.path.join(directory, s), framework="pt") as f:
                out.update({k: os.path.join(directory, s) for k in f.keys()})
        return out
    pickles = [p for p in os.listdir(directory) if p.endswith(_PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(
            f"{directory} holds only pickle checkpoints ({', '.join(sorted(pickles)[:3])}); mimo loads safetensors only, "
            "because unpickling can run arbitrary code. Convert them with a tool you trust to safetensors first."
        )
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {directory}")


def index_names(directory: str) -> list[str] | None:
    """The tensor names ``model.safetensors.index.json`` lists (None without an index), whether or not the
    shards it names are present: enough to know what a checkpoint holds before downloading it."""
    index = os.path.join(os.fspath(directory), "model.safetensors.index.json")
    if not os.path.exists(index):
        return None
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
    except json.JSONDecodeError as e:
        raise ValueError(f"{index} is not valid JSON: {e}") from e
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index} has no 'weight_map' object")
    return list(weight_map)


def count_mtp_layers(directory: str) -> int:
    """How many ``model.mtp.layers.N`` blocks the checkpoint holds: from the index when there is one (its
    shards need not be present), else from the safetensors headers; 0 when the directory has no weights."""
    names = index_names(directory)
    if names is None:
        has_weights = any(p.endswith(".safetensors") for p in os.listdir(directory))
        names = list(weight_files(directory)) if has_weights else []
    ids = {int(m.group(1)) for n in names if (m := _MTP_KEY.match(n))}
    return max(ids) + 1 if ids else 0
