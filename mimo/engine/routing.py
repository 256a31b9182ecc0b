"""Recording the experts the engine routed each token to, per sample (for rollout routing replay, R3).

A trainer that learns from the engine's samples runs its own forward over them; in an MoE its router may
pick other top-k experts than the engine did (kernels, batch shape and precision shift the scores), and a
token sent to other experts is a different function. R3 (MiMo-V2-Flash Sec. 4.6) makes the trainer replay
the engine's choice; measuring how often the two disagree needs the same record.

:class:`RoutingRecorder` is handed to a runner (``engine.runner.routing = recorder``; ``None``, the default,
records nothing and costs nothing). The runner tells it which sample a cache slot holds (``start``, ``move``)
and, after each trunk forward, the experts of every token it computed (``record``). Samples are named by
their random seed, the one identity a plan carries to the runner, so a caller that wants routes gives each
sample its own seed; a sample without a seed is not recorded. Positions are absolute (prompt first): a
speculative step's rejected drafts are recorded and then overwritten when the real tokens are fed.

While recording, decode steps run eagerly (a compiled step does not hand out its router decisions).
"""

from __future__ import annotations

import torch

__all__ = ["RoutingRecorder"]


class RoutingRecorder:
    def __init__(self) -> None:
        self._slot_seed: dict[int, int | None] = {}
        self._records: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    # ---------------------------------------------------------------- the runner's side
    def start(self, slot: int, seed: int | None) -> None:
        self._slot_seed[slot] = seed
        if seed is not None:
            self._records[seed] = []

    def move(self, src: int, dst: int) -> None:
        self._slot_seed[dst] = self._slot_seed.pop(src, None)

    def record(self, slot: int, positions: torch.Tensor, experts: torch.Tensor) -> None:
        """``positions`` [n] and ``experts`` [n, layers, K] of the tokens one slot computed in a forward."""
        seed = self._slot_seed.get(slot)
        if seed is not None and positions.numel():
            self._records[seed].append((positions.cpu(), experts.to("cpu", torch.int32)))

    def record_forward(self, slots: list[int], positions: torch.Tensor, router_out: list) -> None:
        """One trunk forward's ``router_out`` (its MoE layers' ``(scores_TE, experts_TK)``, rows ``[B * T]``)
        for rows ``slots`` at ``positions`` [B, T] (-1: padding, not recorded)."""
        if not router_out:
            return
        b, t = positions.shape
        # to the host once per forward, not once per row (each copy from a GPU is a sync)
        positions = positions.cpu()
        experts = torch.stack([e for _, e in router_out], dim=1).view(b, t, len(router_out), -1).to("cpu", torch.int32)
        for j, slot in enumerate(slots):
            valid = positions[j] >= 0
            self.record(slot, positions[j][valid], experts[j][valid])

    # ---------------------------------------------------------------- the caller's side
    def routes(self, seed: int, length: int) -> torch.Tensor:
        """The experts [length, MoE layers, K] of positions 0..length-1 of the sample with ``seed`` (the last
        record of a position wins). Raises ``KeyError`` when a position was never computed."""
        records = self._records[seed]
        if not records:
            raise KeyError(f"no routing recorded for the sample with seed {seed}")
        layers, k = records[0][1].shape[1:]
        out = torch.full((length, layers, k), -1, dtype=torch.int32)
        for pos, experts in records:
            keep = pos < length
            out[pos[keep]] = experts[keep]
        if (out < 0).any():
            raise KeyError(f"positions {(out[:, 0, 0] < 0).nonzero().flatten().tolist()[:8]} of seed {seed} "
                           "were never computed")
        return out

    def clear(self) -> None:
        self._slot_seed.clear()
        self._records.clear()
