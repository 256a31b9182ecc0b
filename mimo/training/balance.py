"""Auxiliary-loss-free expert balancing (DeepSeek-V3 §2.1.2; MiMo-V2-Flash paper §3.2).

Each MoE router adds ``e_score_correction_bias`` to its sigmoid scores when *choosing* experts
(never when weighting them, :func:`mimo.ops.moe.route`). The bias is not learned by gradient:
after every optimizer step each layer nudges it by a fixed amount toward balance,

    b_e += rate * sign(mean_e' load_e' - load_e)

so an overloaded expert becomes a little less likely to be chosen and an idle one a little more.
``load_e`` counts the tokens routed to expert e during that step (all micro-batches together).
The paper's rate is 1e-3 (1e-5 in the last stage); the default here is 1e-3.
"""

from __future__ import annotations

import torch

from mimo.model import CausalLM
from mimo.model.layers import MoE


def moe_layers(model: CausalLM) -> list[MoE]:
    """The trunk's MoE modules in layer order: the order in which ``trunk(router_out=...)`` appends."""
    return [layer.mlp for layer in model.model.layers if isinstance(layer.mlp, MoE)]


@torch.no_grad()
def update_expert_bias(model: CausalLM, counts: torch.Tensor, rate: float) -> None:
    """Apply one step of the sign update; ``counts`` is [n_MoE_layers, E] tokens per expert."""
    layers = moe_layers(model)
    if counts.shape[0] != len(layers):
        raise ValueError(f"expert counts for {counts.shape[0]} MoE layers, the model has {len(layers)}")
    if rate == 0:
        return
    for moe, load in zip(layers, counts):
        load = load.float()
        bias = moe.gate.e_score_correction_bias
        bias += rate * torch.sign(load.mean() - load).to(bias.device, bias.dtype)


def load_imbalance(counts: torch.Tensor) -> torch.Tensor:
    """Max load / mean load per MoE layer (1 = perfectly balanced, E = every token on one expert)."""
    load = counts.float()
    return load.max(-1).values / load.mean(-1).clamp_min(1e-9)


def bias_stats(model: CausalLM) -> dict[str, float]:
    """The spread of the balancing biases, for logging."""
    biases = [m.gate.e_score_correction_bias for m in moe_layers(model)]
    if not biases:
        return {}
    b = torch.stack(biases)
    return {"bias_absmax": float(b.abs().max()), "bias_std": float(b.std(-1).mean())}
