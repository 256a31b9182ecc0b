"""Training-run state on disk: exact checkpoints (safetensors + JSON, never pickle) and the shipped export.

A checkpoint ``out/checkpoints/step-N/`` holds everything the next optimizer step depends on:

* ``model/``: the weights and the expert-balancing biases in the hub layout, fp32 (resume must be exact);
* ``optimizer.safetensors`` (AdamW moments and step counts keyed ``<param name>.<key>``) and
  ``optimizer.json`` (param groups with their hyper-parameters and parameter names);
* ``state.json``: step, schedule length, data position, Python/NumPy/torch RNG states, run config.

Atomicity: everything is written into a temporary sibling directory, fsynced, and renamed into
place with ``os.replace``; ``state.json`` is written last and marks a complete checkpoint. A run
killed at any moment therefore leaves the previous checkpoint loadable, and temporary directories
(``.tmp-*``) are ignored when looking for the latest one.

``export_final`` writes the model as shipped (bf16 hub layout + tokenizer + generation_config.json).
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mimo.checkpoint import MiMoForCausalLM
from mimo.tokenizer import Tokenizer

CKPT_PREFIX = "step-"
TRAINING_STATE = "training_state.json"  # in an exported model directory: see mimo.training.trainer


def write_json(path: str, obj: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_optimizer(opt: torch.optim.Optimizer, directory: str) -> None:
    """AdamW state by parameter name: tensors in optimizer.safetensors, groups and key lists in optimizer.json."""
    tensors: dict[str, torch.Tensor] = {}
    groups, state_keys = [], {}
    for g in opt.param_groups:
        for name, p in zip(g["names"], g["params"]):
            st = opt.state.get(p, {})
            state_keys[name] = sorted(st)
            for k, v in st.items():
                tensors[f"{name}.{k}"] = v.detach().contiguous()
        groups.append({k: v for k, v in g.items() if k != "params"})
    save_file(tensors, os.path.join(directory, "optimizer.safetensors"), metadata={"format": "pt"})
    write_json(os.path.join(directory, "optimizer.json"), {"param_groups": groups, "state": state_keys})


def load_optimizer(opt: torch.optim.Optimizer, directory: str) -> None:
    index = read_json(os.path.join(directory, "optimizer.json"))
    tensors = load_file(os.path.join(directory, "optimizer.safetensors"))
    sd: dict = {"state": {}, "param_groups": []}
    i = 0
    for g, saved in zip(opt.param_groups, index["param_groups"], strict=True):
        if saved["names"] != g["names"]:
            raise ValueError(f"optimizer checkpoint in {directory} was saved for other parameters")
        pg = {**saved, "betas": tuple(saved["betas"]), "params": list(range(i, i + len(g["params"])))}
        for j, name in enumerate(g["names"]):
            if index["state"][name]:
                sd["state"][i + j] = {k: tensors[f"{name}.{k}"] for k in index["state"][name]}
        sd["param_groups"].append(pg)
        i += len(g["params"])
    opt.load_state_dict(sd)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
    }


def set_rng_state(s: dict) -> None:
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    n = s["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(s["torch"]), dtype=np.uint8).copy()))


def _fsync_tree(directory: str) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())


def save_checkpoint(out: str, step: int, model: MiMoForCausalLM, opt: torch.optim.Optimizer, state: dict,
                    keep: int = 2) -> str:
    """Write ``out/checkpoints/step-N`` atomically (temp dir + ``os.replace``) and prune older ones."""
    root = os.path.join(out, "checkpoints")
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"{CKPT_PREFIX}{step:08d}")
    if os.path.isdir(final):  # same step already saved (a resume stopped at once): the state is identical
        return final
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
    try:
        model.save_pretrained(os.path.join(tmp, "model"))  # fp32: resume must be exact
        save_optimizer(opt, tmp)
        write_json(os.path.join(tmp, "state.json"), state)  # written last: its presence marks a complete save
        _fsync_tree(tmp)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out: str) -> list[str]:
    """Complete checkpoints, oldest first (temporary directories of interrupted saves are ignored)."""
    root = os.path.join(out, "checkpoints")
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith(CKPT_PREFIX) and n[len(CKPT_PREFIX):].isdigit())
    return [os.path.join(root, n) for n in names if os.path.exists(os.path.join(root, n, "state.json"))]


def latest_checkpoint(out: str) -> str | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def read_training_state(directory: str) -> dict:
    """The :data:`TRAINING_STATE` that :func:`export_final` wrote beside a model; a clear error where there is none."""
    path = os.path.join(directory, TRAINING_STATE)
    if not os.path.exists(path):
        raise ValueError(f"cannot continue from {directory}: no {TRAINING_STATE} (only a final/ directory that "
                         "mimo train exported carries the state a run continues from)")
    return read_json(path)


def export_final(out: str, model: MiMoForCausalLM, tokenizer: Tokenizer, name: str = "final",
                 state: dict | None = None) -> str:
    """The model as shipped: bf16 hub layout, tokenizer files and generation_config.json, swapped in whole; with
    ``state``, also the run's :data:`TRAINING_STATE` (what a continued run starts from)."""
    dst = os.path.join(out, name)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=out)
    try:
        model.save_pretrained(tmp, dtype=torch.bfloat16)
        tokenizer.save_pretrained(tmp)
        eos = tokenizer.eos_token_id
        write_json(os.path.join(tmp, "generation_config.json"), {
            "eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
            "do_sample": True, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 256})
        if state is not None:
            write_json(os.path.join(tmp, TRAINING_STATE), state)
        old = dst + ".old"
        shutil.rmtree(old, ignore_errors=True)
        if os.path.isdir(dst):
            os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
