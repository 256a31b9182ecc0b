"""A model split over 2 processes computes what one process computes: TP 2, EP 2 and TP 2 + EP 2, from a
wide checkpoint and from one in the release's FP8 layout (each rank loading only its slices)."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from mimo.checkpoint import MiMoForCausalLM
from mimo.parallel.group import free_port
from tests.dist._workers import LAYOUTS, held_bytes, logits_per_layout
from tests.helpers import random_model, tiny_config


def _config():
    # Every path at 2 ranks: 1 full-attention KV head (held by both ranks), 2 sliding-window KV heads with sinks
    # (split), 8 experts top-2 in 2 groups, 3 MTP blocks, a 128-row k_proj per-head grid when FP8.
    return tiny_config(n_group=2, topk_group=1, hidden_size=64, head_dim=128, v_head_dim=32, num_attention_heads=4,
                       num_key_value_heads=1, moe_intermediate_size=32, intermediate_size=96)


def _run(path, ids, dtype, tmp_path) -> list[dict]:
    mp.spawn(logits_per_layout, args=(2, free_port(), str(path), ids, dtype, str(tmp_path)), nprocs=2)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 128, (2, 21), generator=torch.Generator().manual_seed(0))  # longer than the window (9)


def test_layouts_equal_one_process(tmp_path_factory, ids):
    path = tmp_path_factory.mktemp("wide")
    random_model(_config(), seed=1).save_pretrained(path)
    one = MiMoForCausalLM.from_pretrained(path, dtype="float32")
    with torch.no_grad():
        want = one(ids).logits
    ranks = _run(path, ids, "float32", tmp_path_factory.mktemp("out"))
    for name, tp, _, _ in LAYOUTS:
        for r, res in enumerate(ranks):
            err = (res[name]["logits"] - want).abs().max().item()
            assert err < 1e-5, f"{name} rank {r}: logits differ by {err}"
            assert (res[name]["odd"] - want[:1]).abs().max().item() < 1e-5
        # each rank holds its part: about half the model under TP; under EP alone, half the experts and the rest
        held = max(res[name]["bytes"] for res in ranks)
        if tp:
            assert held < 0.6 * held_bytes(one), f"{name}: a rank holds {held / held_bytes(one):.0%} of the model"
        else:
            experts = sum(p.numel() * p.element_size() for n, p in one.named_parameters() if ".experts." in n)
            assert held == held_bytes(one) - experts // 2, f"{name}: a rank holds {held} bytes"


@pytest.mark.parametrize("block", [128, 16])
def test_fp8_slices_load_with_their_scales(tmp_path_factory, ids, block):
    """Rows cut from per-head and uniform scale grids; columns cut inside one block (128), and across blocks
    (16: rank 1's dense columns start at 52, its experts' at 20), which the kernels cannot read as FP8: those
    slices are held in the checkpoint's torch_dtype (here fp32) instead, and their layer's other experts too."""
    path = tmp_path_factory.mktemp(f"fp8-{block}")
    cfg = _config().replace(intermediate_size=104, moe_intermediate_size=40)
    random_model(cfg, seed=2).save_pretrained(path, quantization="fp8", block=block, dtype=torch.float32)
    wide = MiMoForCausalLM.from_pretrained(path, dtype="float32")  # dequantized in one process
    with torch.no_grad():
        want = wide(ids).logits
    ranks = _run(path, ids, "auto", tmp_path_factory.mktemp("out"))
    for name, _, _, _ in LAYOUTS:
        for r, res in enumerate(ranks):
            err = ((res[name]["logits"] - want).abs().max() / want.abs().max()).item()
            assert err < 1e-4, f"{name} rank {r}: FP8 logits differ from the dequantized model's by {err:.2e}"


def test_each_rank_takes_its_own_gpu(monkeypatch):
    """``device="cuda"`` under parallelism: rank r on a host runs on cuda:r (LOCAL_RANK under torchrun); an
    explicit index or another device is kept; more ranks than GPUs is a clear error. (No GPU here: the count
    is faked; the mapping is what is tested.)"""
    import torch

    from mimo.parallel.group import rank_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert rank_device("cuda", 3) == torch.device("cuda", 3)
    monkeypatch.setenv("LOCAL_RANK", "5")  # torchrun, second node: global rank 13 is the host's 6th
    assert rank_device("cuda", 13) == torch.device("cuda", 5)
    assert rank_device("cuda:2", 13) == torch.device("cuda", 2)
    assert rank_device("cpu", 1) == torch.device("cpu") and rank_device(None, 1) is None
    monkeypatch.setenv("LOCAL_RANK", "8")
    with pytest.raises(ValueError, match="8 GPU"):
        rank_device("cuda", 8)
