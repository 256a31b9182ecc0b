"""The KV cache, one pool per attention kind (spec §2.8): full layers grow, sliding layers are rings.

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
    def __init__(self, slots: int, heads: int, size: int, dk: int, dv: int, dtype: torch.dtype) -> None:
        self.k = torch.zeros(slots, heads, size, dk, dtype=dtype)
        self.v = torch.zeros(slots, heads, size, dv, dtype=dtype)
        self.pos = torch.full((slots, size), -1, dtype=torch.long)
        self.size = size

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class _Full:
    def __init__(self, slots: int, heads: int, capacity: int, dk: int, dv: int, dtype: torch.dtype) -> None:
        self.k = torch.zeros(slots, heads, capacity, dk, dtype=dtype)
        self.v = torch.zeros(slots, heads, capacity, dv, dtype=dtype)

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def grow(self, capacity: int) -> None:
        s, h, c, dk = self.k.shape
        k = torch.zeros(s, h, capacity, dk, dtype=self.k.dtype)
        v = torch.zeros(s, h, capacity, self.v.shape[-1], dtype=self.v.dtype)
        k[:, :, :c], v[:, :, :c] = self.k, self.v
        self.k, self.v = k, v

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


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
    ) -> None:
        if lookahead < 1:
            raise ValueError("lookahead must be >= 1")
        self.config = config
        self.max_seqs = max_seqs
        self.max_len = max_len
        self.window = config.sliding_window
        self.lookahead = lookahead
        self.ring_size = min(config.sliding_window + lookahead, max_len)
        cap = min(initial_capacity, max_len)
        self.full: dict[object, _Full] = {}
        self.rings: dict[object, _Ring] = {}
        for i, kind in enumerate(config.layer_types):
            h, dk, dv = config.num_kv_heads(kind), config.qk_head_dim(kind), config.v_dim(kind)
            if kind == FULL:
                self.full[i] = _Full(max_seqs, h, cap, dk, dv, dtype)
            else:
                self.rings[i] = _Ring(max_seqs, h, self.ring_size, dk, dv, dtype)
        for j in range(config.num_mtp_layers):
            h, dk, dv = config.num_kv_heads(SLIDING), config.qk_head_dim(SLIDING), config.v_dim(SLIDING)
            self.rings[("mtp", j)] = _Ring(max_seqs, h, self.ring_size, dk, dv, dtype)
        self._slots = torch.zeros(0, dtype=torch.long)
        self._range: tuple[int, int] | None = None

    # ------------------------------------------------------------------ batch binding
    def bind(self, slots: list[int]) -> HybridKVCache:
        """The next forward's row b is slot ``slots[b]``; a contiguous run of slots is read through views."""
        if not slots or len(set(slots)) != len(slots) or min(slots) < 0 or max(slots) >= self.max_seqs:
            raise ValueError(f"bad slot list {slots} for a cache of {self.max_seqs} slots")
        self._slots = torch.tensor(slots, dtype=torch.long)
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
        valid = positions >= 0
        rows, cols = valid.nonzero(as_tuple=True)
        if layer in self.full:
            pool = self.full[layer]
            p = positions[rows, cols]
            slot = self._slots[rows]
            pool.k[slot, :, p] = k[rows, :, cols].to(pool.k.dtype)
            pool.v[slot, :, p] = v[rows, :, cols].to(pool.v.dtype)
            n = int(positions.max()) + 1
            k_pos = torch.arange(n).expand(b, n)  # index == position; later garbage is hidden by causality
            return self._rows(pool.k)[:, :, :n], self._rows(pool.v)[:, :, :n], k_pos
        ring = self.rings[layer]
        t = k.shape[2]
        if t <= ring.size - self.window + 1:
            # Writing first is safe: the entries overwritten lie > window behind every query here.
            self._write_ring(ring, rows, cols, k, v, positions)
            return self._rows(ring.k), self._rows(ring.v), self._rows(ring.pos)
        # A long chunk would overwrite keys its own first queries need: attend over old ring + new
        # keys, then keep only each row's newest ``ring.size`` positions.
        k_all = torch.cat([self._rows(ring.k), k.to(ring.k.dtype)], dim=2)
        v_all = torch.cat([self._rows(ring.v), v.to(ring.v.dtype)], dim=2)
        pos_all = torch.cat([self._rows(ring.pos), positions], dim=1)
        newest = positions.max(dim=1, keepdim=True).values
        keep = valid & (positions > newest - ring.size)
        rows, cols = keep.nonzero(as_tuple=True)
        self._write_ring(ring, rows, cols, k, v, positions)
        return k_all, v_all, pos_all

    def _write_ring(self, ring: _Ring, rows, cols, k, v, positions) -> None:
        p = positions[rows, cols]
        idx = p % ring.size
        slot = self._slots[rows]
        ring.k[slot, :, idx] = k[rows, :, cols].to(ring.k.dtype)
        ring.v[slot, :, idx] = v[rows, :, cols].to(ring.v.dtype)
        ring.pos[slot, idx] = p

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
        """(bytes per position in all full pools, bytes per ring entry in all rings) for one slot."""
        full = sum(p.nbytes() // (self.max_seqs * p.capacity) for p in self.full.values())
        ring = sum(r.nbytes() // (self.max_seqs * r.size) for r in self.rings.values())
        return full, ring

    def sequence_bytes(self, length: int) -> int:
        """Bytes a sequence of ``length`` tokens occupies: full pools grow, rings are fixed."""
        full, ring = self.bytes_per_token()
        return full * length + ring * min(length, self.ring_size) if length else 0

    def allocated_bytes(self) -> int:
        return sum(p.nbytes() for p in self.full.values()) + sum(r.nbytes() for r in self.rings.values())
