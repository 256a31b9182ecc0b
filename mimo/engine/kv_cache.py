"""The KV cache, one pool per attention kind (paper §2.1): full layers grow, sliding layers are rings.

Sequences live in *slots* (rows of every pool). The engine keeps running sequences in slots
0..B-1, so a batch reads each pool through a view, without gathering.

* Full-attention layers: ``[slots, Hkv, capacity, D]``, the token at position p at index p.
  Capacity grows for every slot together, in steps of at most 1/16 of the current size.
* Sliding-window layers and MTP blocks: rings of ``window + lookahead`` entries per slot,
  position p at index ``p % ring``, with each entry's position kept beside it (-1 = empty), so
  the attention mask is rebuilt from positions and wrap-around needs no special case.

Speculative rollback never needs an overwritten entry: a step writes at most
``lookahead`` (>= drafts + 1) positions past the last committed one, so it only overwrites
positions more than ``window`` behind every query that can still come. Rolled-back entries
are invalidated (position -1) so they can never be read twice.
"""

from __future__ import annotations

import torch

from mimo.config import FULL, SLIDING, MiMoConfig


class _Ring:
    def __init__(self, slots: int, heads: int, size: int, dk: int, dv: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.k = torch.zeros(slots, heads, size, dk, dtype=dtype, device=device)
        self.v = torch.zeros(slots, heads, size, dv, dtype=dtype, device=device)
        self.pos = torch.full((slots, size), -1, dtype=torch.long, device=device)
        self.size = size

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class _Full:
    def __init__(self, slots: int, heads: int, capacity: int, dk: int, dv: int, dtype: torch.dtype,
                 device: torch.device, dynamic: bool = False) -> None:
        self.dynamic = dynamic
        self.k = torch.zeros(slots, heads, capacity, dk, dtype=dtype, device=device)
        self.v = torch.zeros(slots, heads, capacity, dv, dtype=dtype, device=device)
        self._mark()

    def _mark(self) -> None:
        if self.dynamic:  # a compiled decode treats the capacity as a symbol: growing does not recompile
            torch._dynamo.mark_dynamic(self.k, 2)
            torch._dynamo.mark_dynamic(self.v, 2)

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def grow(self, capacity: int) -> None:
        s, h, c, dk = self.k.shape
        k = self.k.new_zeros(s, h, capacity, dk)
        v = self.v.new_zeros(s, h, capacity, self.v.shape[-1])
        k[:, :, :c], v[:, :, :c] = self.k, self.v
        self.k, self.v = k, v
        self._mark()

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


def _write_ring(ring: _Ring, slot: torch.Tensor, idx: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                p: torch.Tensor) -> None:
    """Store entries k/v [N, H, D] of positions p at (slot, idx) of a ring."""
    ring.k[slot, :, idx] = k.to(ring.k.dtype)
    ring.v[slot, :, idx] = v.to(ring.v.dtype)
    ring.pos[slot, idx] = p


class _WritePlan:
    """The scatter indices of one forward's new keys (rows with position -1 are padding)."""

    def __init__(self, positions: torch.Tensor, slots: torch.Tensor) -> None:
        self.positions = positions
        self.rows, self.cols = (positions >= 0).nonzero(as_tuple=True)
        self.p = positions[self.rows, self.cols]
        self.slot = slots[self.rows]
        self.all_valid = self.rows.numel() == positions.numel()
        n = int(positions.max()) + 1
        # Full pools: index == position; later garbage is hidden by causality.
        self.k_pos = torch.arange(n, device=positions.device).expand(positions.shape[0], n)
        self._ring_index: dict[int, torch.Tensor] = {}

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, T, D] -> the valid (row, position) entries [N, H, D], in row-major order."""
        if self.all_valid:  # decode and verify: no padding, so a view does it
            return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])
        return x[self.rows, :, self.cols]

    def ring_index(self, size: int) -> torch.Tensor:
        idx = self._ring_index.get(size)
        if idx is None:
            idx = self._ring_index[size] = self.p % size
        return idx


class HybridKVCache:
    """Implements the model's ``KVCache`` protocol for a batch bound with :meth:`bind`."""

    def __init__(
        self,
        config: MiMoConfig,
        max_seqs: int,
        max_len: int,
        lookahead: int = 1,
        dtype: torch.dtype = torch.float32,
        initial_capacity: int = 256,
        dynamic_capacity: bool = False,
        device: torch.device | str = "cpu",
        kv_heads: dict[str, int] | None = None,
    ) -> None:
        """``kv_heads``: KV heads per attention kind this process caches (a tensor-parallel rank's share;
        default: the config's)."""
        if lookahead < 1:
            raise ValueError("lookahead must be >= 1")
        self.config = config
        self.device = device = torch.device(device)
        self.max_seqs = max_seqs
        self.max_len = max_len
        self.window = config.sliding_window
        self.lookahead = lookahead
        self.ring_size = min(config.sliding_window + lookahead, max_len)
        cap = min(initial_capacity, max_len)
        self.full: dict[object, _Full] = {}
        self.rings: dict[object, _Ring] = {}

        def heads(kind: str) -> int:
            return (kv_heads or {}).get(kind, config.num_kv_heads(kind))

        for i, kind in enumerate(config.layer_types):
            h, dk, dv = heads(kind), config.qk_head_dim(kind), config.v_dim(kind)
            if kind == FULL:
                self.full[i] = _Full(max_seqs, h, cap, dk, dv, dtype, device, dynamic_capacity)
            else:
                self.rings[i] = _Ring(max_seqs, h, self.ring_size, dk, dv, dtype, device)
        for j in range(config.num_mtp_layers):
            h, dk, dv = heads(SLIDING), config.qk_head_dim(SLIDING), config.v_dim(SLIDING)
            self.rings[("mtp", j)] = _Ring(max_seqs, h, self.ring_size, dk, dv, dtype, device)
        self._per_token: tuple[int, int] | None = None
        self._slots = torch.zeros(0, dtype=torch.long, device=device)
        self._range: tuple[int, int] | None = None
        self._plan: _WritePlan | None = None

    # ------------------------------------------------------------------ batch binding
    def bind(self, slots: list[int]) -> HybridKVCache:
        """The next forward's row b is slot ``slots[b]``; a contiguous run of slots is read through views."""
        if not slots or len(set(slots)) != len(slots) or min(slots) < 0 or max(slots) >= self.max_seqs:
            raise ValueError(f"bad slot list {slots} for a cache of {self.max_seqs} slots")
        self._slots = torch.tensor(slots, dtype=torch.long, device=self.device)
        self._plan = None
        contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
        self._range = (slots[0], slots[0] + len(slots)) if contiguous else None
        return self

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        """A pool's rows for the bound batch: a view when contiguous, else a gathered copy."""
        if self._range is not None:
            return t[self._range[0] : self._range[1]]
        return t[self._slots]

    def ensure_capacity(self, length: int) -> None:
        """Make room for positions < ``length`` in every full-attention pool."""
        if length > self.max_len:
            raise ValueError(f"sequence of {length} tokens exceeds max_len {self.max_len}")
        for pool in self.full.values():
            cap = pool.capacity
            if length > cap:
                step = max(256, cap // 16)
                pool.grow(min(self.max_len, -(-length // step) * step))

    # ------------------------------------------------------------------ KVCache protocol
    def update(
        self, layer: object, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = len(self._slots)
        if k.shape[0] != b:
            raise RuntimeError(f"cache bound to {b} rows, got a batch of {k.shape[0]}")
        plan = self._plan_for(positions)
        p, slot = plan.p, plan.slot
        if layer in self.full:
            pool = self.full[layer]
            pool.k[slot, :, p] = plan.gather(k).to(pool.k.dtype)
            pool.v[slot, :, p] = plan.gather(v).to(pool.v.dtype)
            n = plan.k_pos.shape[1]  # a tensor's size, so a compiled decode sees it as dynamic
            return self._rows(pool.k)[:, :, :n], self._rows(pool.v)[:, :, :n], plan.k_pos
        ring = self.rings[layer]
        t = k.shape[2]
        if t <= ring.size - self.window + 1:
            # Writing first is safe: the entries overwritten lie > window behind every query here.
            _write_ring(ring, slot, plan.ring_index(ring.size), plan.gather(k), plan.gather(v), p)
            return self._rows(ring.k), self._rows(ring.v), self._rows(ring.pos)
        # A long chunk would overwrite keys its own first queries need: attend over old ring + new
        # keys, then keep only each row's newest ``ring.size`` positions.
        k_all = torch.cat([self._rows(ring.k), k.to(ring.k.dtype)], dim=2)
        v_all = torch.cat([self._rows(ring.v), v.to(ring.v.dtype)], dim=2)
        pos_all = torch.cat([self._rows(ring.pos), positions], dim=1)
        newest = positions.max(dim=1, keepdim=True).values
        keep = (positions >= 0) & (positions > newest - ring.size)
        rows, cols = keep.nonzero(as_tuple=True)
        p = positions[rows, cols]
        _write_ring(ring, self._slots[rows], p % ring.size, k[rows, :, cols], v[rows, :, cols], p)
        return k_all, v_all, pos_all

    def prepare(self, positions: torch.Tensor) -> HybridKVCache:
        """Compute the next forward's write plan now, outside a compiled region (it syncs with the host)."""
        self._plan = _WritePlan(positions, self._slots)
        return self

    def _plan_for(self, positions: torch.Tensor) -> _WritePlan:
        """Where this forward's keys go: computed by the first layer, reused by the others."""
        if torch.compiler.is_compiling():
            return self._plan  # type: ignore[return-value]  # made by prepare() before the compiled call
        if self._plan is None or self._plan.positions is not positions:
            self._plan = _WritePlan(positions, self._slots)
        return self._plan

    # ------------------------------------------------------------------ slot management
    def reset(self, slot: int) -> None:
        """Forget a slot's ring entries (full pools need nothing: index == position, causality hides the rest)."""
        for ring in self.rings.values():
            ring.pos[slot] = -1

    def truncate(self, slot: int, length: int) -> None:
        """Roll the main layers of a slot back to ``length`` positions (MTP rings are handled by the drafter)."""
        for key, ring in self.rings.items():
            if not isinstance(key, tuple):
                row = ring.pos[slot]
                row[row >= length] = -1

    def truncate_one(self, key: object, slot: int, length: int) -> None:
        """Invalidate one ring's entries at positions >= ``length`` for a slot."""
        row = self.rings[key].pos[slot]
        row[row >= length] = -1

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot ``src`` into ``dst`` (compaction after a sequence leaves)."""
        for pool in self.full.values():
            pool.k[dst, :, :length] = pool.k[src, :, :length]
            pool.v[dst, :, :length] = pool.v[src, :, :length]
        for ring in self.rings.values():
            ring.k[dst], ring.v[dst], ring.pos[dst] = ring.k[src], ring.v[src], ring.pos[src]
        self.reset(src)

    # ------------------------------------------------------------------ accounting
    def bytes_per_token(self) -> tuple[int, int]:
        """(bytes per position in all full pools, bytes per ring entry in all rings) for one slot. Fixed for the
        cache's life (growing adds positions, not bytes per position): computed once, as the scheduler asks for
        every row at every step."""
        if self._per_token is None:
            full = sum(p.nbytes() // (self.max_seqs * p.capacity) for p in self.full.values())
            ring = sum(r.nbytes() // (self.max_seqs * r.size) for r in self.rings.values())
            self._per_token = (full, ring)
        return self._per_token

    def sequence_bytes(self, length: int) -> int:
        """Bytes a sequence of ``length`` tokens occupies: full pools grow, rings are fixed."""
        full, ring = self.bytes_per_token()
        return full * length + ring * min(length, self.ring_size) if length else 0

    def allocated_bytes(self) -> int:
        return sum(p.nbytes() for p in self.full.values()) + sum(r.nbytes() for r in self.rings.values())
