"""The modules a parallel plan swaps in. Each is the single-device module it replaces (same parameters, same
names, so checkpoints and ``state_dict`` are unchanged) holding its rank's slice, with the collective that
completes the result written in its ``forward``:

* :class:`RowParallelLinear` (o_proj, the dense MLPs' down_proj): its input columns are split, so its product
  is a partial sum; an all-reduce completes it;
* :class:`VocabParallelEmbedding`: rows of the table; a token outside the rank's range embeds as zeros, and
  the all-reduce gives every rank every row;
* :class:`ParallelLMHead`: rows of the head (the vocabulary); an all-gather gives every rank the full logits,
  so every rank samples the same tokens from the same generators;
* :class:`ParallelExperts`: the routed experts, split by expert (EP: each rank runs the assignments to its own
  experts) or by their intermediate size (TP only: each rank a slice of every expert); either way a partial
  sum per token and one all-reduce. Routing is computed on every rank from the same input, so it agrees.

q/k/v, the dense gate/up and the sink logits need no new module: their output is split by head (or by
intermediate row) and the next module takes the slice (attention reads its head counts from its weights).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mimo.model.layers import Experts, Linear
from mimo.parallel.group import ParallelGroup


class RowParallelLinear(Linear):
    group: ParallelGroup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(super().forward(x))


class VocabParallelEmbedding(nn.Embedding):
    group: ParallelGroup
    vocab_start: int

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = self.weight.shape[0]
        local = input_ids - self.vocab_start
        inside = (local >= 0) & (local < n)
        rows = F.embedding(local.clamp(0, n - 1), self.weight) * inside.unsqueeze(-1).to(self.weight.dtype)
        return self.group.all_reduce(rows)


class ParallelLMHead(Linear):
    group: ParallelGroup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_gather(super().forward(x), dim=-1)


class ParallelExperts(Experts):
    group: ParallelGroup
    first: int | None  # EP: the global id of this rank's first expert; None: TP (a slice of every expert)
    all_to_all_from: int | None = None  # EP: steps of at least this many tokens dispatch by all-to-all

    def forward(self, x_TD: torch.Tensor, weights_TK: torch.Tensor, experts_TK: torch.Tensor) -> torch.Tensor:
        if self.first is None:
            return self.group.all_reduce(super().forward(x_TD, weights_TK, experts_TK))
        if (self.all_to_all_from is not None and x_TD.shape[0] >= self.all_to_all_from
                and not torch.compiler.is_compiling()):
            return self._all_to_all(x_TD, weights_TK, experts_TK)
        n = self.gate_proj.shape[0]
        local = experts_TK - self.first
        mine = (local >= 0) & (local < n)
        if torch.compiler.is_compiling():
            # Fixed shapes for the graph: others' assignments count with weight 0 (an expert read for nothing).
            y = super().forward(x_TD, weights_TK * mine, local.clamp(0, n - 1))
        else:
            # Only this rank's assignments, one row each: the other ranks add theirs in the all-reduce.
            tok, slot = mine.nonzero(as_tuple=True)
            y = x_TD.new_zeros(x_TD.shape)
            if tok.numel():
                part = super().forward(x_TD.index_select(0, tok), weights_TK[tok, slot, None],
                                       local[tok, slot, None])
                y.index_add_(0, tok, part)
        return self.group.all_reduce(y)


    def _all_to_all(self, x_TD: torch.Tensor, weights_TK: torch.Tensor, experts_TK: torch.Tensor) -> torch.Tensor:
        """Expert parallelism by dispatch: each rank takes its share of the tokens, sends each of their
        assignments to the rank owning the expert and gets the expert's output back (two all-to-alls), weights and
        sums them, and an all-gather gives every rank every token again. It moves each assignment's activations
        instead of every token's partial sum, at the price of four collectives (counts, rows, results, gather)
        instead of one: what pays depends on the step's size and the links (benchmarks/compare_parallel.py)."""
        g, n_local = self.group, self.gate_proj.shape[0]
        t, k = experts_TK.shape
        per = -(-t // g.size)  # tokens per rank, the last rank's share padded
        lo, hi = min(g.rank * per, t), min((g.rank + 1) * per, t)
        experts, weights = experts_TK[lo:hi].reshape(-1), weights_TK[lo:hi].reshape(-1)
        owner = torch.div(experts, n_local, rounding_mode="floor")
        order = torch.argsort(owner, stable=True)
        token = order // k  # within this rank's share
        send_counts = torch.bincount(owner, minlength=g.size)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=g.pg)
        sends, recvs = send_counts.tolist(), recv_counts.tolist()
        rows = x_TD.new_empty(sum(recvs), x_TD.shape[1])
        dist.all_to_all_single(rows, x_TD[lo:hi].index_select(0, token).contiguous(), recvs, sends, group=g.pg)
        ids = experts.new_empty(sum(recvs))
        dist.all_to_all_single(ids, (experts[order] - owner[order] * n_local).contiguous(), recvs, sends, group=g.pg)
        done = super().forward(rows, torch.ones(len(ids), 1, dtype=weights.dtype, device=rows.device), ids[:, None])
        back = x_TD.new_empty(len(order), x_TD.shape[1])
        dist.all_to_all_single(back, done.contiguous(), sends, recvs, group=g.pg)
        mine = x_TD.new_zeros(per, x_TD.shape[1])
        mine.index_add_(0, token, back * weights[order, None].to(back.dtype))
        return g.all_gather(mine, dim=0)[:t]


def become(module: nn.Module, cls: type, **attributes: object) -> None:
    """Make ``module`` an instance of its parallel subclass ``cls`` in place: it keeps its parameters, buffers
    and name (so the checkpoint's names still fit); only ``forward`` and the given attributes are new."""
    if not issubclass(cls, type(module)):
        raise TypeError(f"{cls.__name__} is not a {type(module).__name__}")
    module.__class__ = cls
    for name, value in attributes.items():
        setattr(module, name, value)
