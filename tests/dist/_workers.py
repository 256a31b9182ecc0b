"""What each rank of the 2-process tests runs (importable by the processes ``torch.multiprocessing`` spawns)."""

from __future__ import annotations

import torch
import torch.distributed as dist

# (name, tensor parallel, expert parallel, EP steps of at least this many tokens dispatch by all-to-all)
LAYOUTS = [("tp2", True, False, None), ("ep2", False, True, None), ("tp2+ep2", True, True, None),
           ("tp2+ep2 all-to-all", True, True, 1), ("ep2 all-to-all", False, True, 1)]


def held_bytes(model) -> int:
    """Bytes of every parameter and buffer this process holds for the model (non-persistent ones included)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t is not None and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def logits_per_layout(rank: int, world: int, port: int, path: str, ids: torch.Tensor, dtype: str, out: str) -> None:
    """Each layout's logits and held bytes on this rank, saved to ``out/rank{rank}.pt``."""
    import mimo.ops.linear as linear_ops
    from mimo.ops import kernels
    from mimo.parallel import ParallelGroup, load_sharded
    from mimo.parallel.group import init

    torch.set_num_threads(1)
    kernels.load()  # as the engine does: decode-sized products of FP8 weights in the kernels
    # Longer inputs multiply FP8 weights dequantized to fp32 (as on AVX2 CPUs), not bf16: exact comparisons.
    linear_ops._fast_bf16_gemm = lambda: False
    init(rank, world, "gloo", port, timeout_s=120)
    try:
        res = {}
        for name, tp, ep, a2a in LAYOUTS:
            model = load_sharded(path, ParallelGroup(rank, world, ep=ep, tp=tp, all_to_all_from=a2a), dtype=dtype)
            with torch.no_grad():
                res[name] = {"logits": model(ids).logits.float(), "bytes": held_bytes(model),
                             "odd": model(ids[:1]).logits.float()}  # an odd number of tokens to share out
            del model
        torch.save(res, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
