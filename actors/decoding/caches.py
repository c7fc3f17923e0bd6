"""Approximate KV caches for full-attention dLLMs (Fast-dLLM, Wu et al. 2025, section 3.2).

In a full-attention model every token attends to every other, so after a token is revealed the keys and
values of all positions change: no cache is exact. Fast-dLLM observes that they change little between
adjacent denoising steps and reuses them inside a block:

- at the first step of each block one full pass computes the logits and stores the keys and values of
  every position (the refresh);
- the later steps of the block recompute only a window of positions, attending to the stored keys of
  the rest: ``prefix`` recomputes the block and everything after it (the stored prefix is stale only in
  that it has not seen the block's new tokens), ``dual`` recomputes only the block (the masked suffix is
  stored too).

`WindowCache` is the read-only view a step passes to the model: keys ``[stored before the window |
the window's fresh keys | stored after it]`` in sequence order, so the caller's 2D padding mask over the
whole sequence is the mask over these keys.
"""

from __future__ import annotations

import torch

from system.models.base import KVCache


class WindowCache(KVCache):
    """The stored keys of every position with ``[lo, hi)`` replaced by the call's fresh ones (read-only).

    ``length`` counts the stored positions the call attends to besides its own, so the model adapter
    expects a key mask of ``length + (hi - lo)`` = the whole sequence. ``lead`` = 1 marks a window that
    starts one position before the first one the caller needs (shifted-logit families, Dream)."""

    def __init__(self, full: KVCache, lo: int, hi: int, lead: int = 0) -> None:
        super().__init__()
        assert 0 <= lo < hi <= full.length, (lo, hi, full.length)
        self.full, self.lo, self.hi = full, lo, hi
        self.leads_by_one = lead == 1

    @property
    def length(self) -> int:
        return self.full.length - (self.hi - self.lo)

    def extend(
        self, layer: int, key: torch.Tensor, value: torch.Tensor, store: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert not store, "a window over the refreshed cache is read-only"
        assert key.shape[-2] == self.hi - self.lo, "the call's length must be the window's"
        keys, values = self.full.keys[layer], self.full.values[layer]
        full_k = torch.cat([keys[..., : self.lo, :], key, keys[..., self.hi :, :]], dim=-2)
        full_v = torch.cat([values[..., : self.lo, :], value, values[..., self.hi :, :]], dim=-2)
        return full_k, full_v

    def crop(self, length: int) -> None:
        raise NotImplementedError("a window cache is a read-only view")


def select_rows(cache: KVCache, rows: torch.Tensor) -> KVCache:
    """A cache holding only ``rows`` (indices into the cache's batch) of every layer: the rows that still
    decode when others have finished the block, so that finished rows cost nothing."""
    out = KVCache()
    out.keys = [k.index_select(0, rows) for k in cache.keys]
    out.values = [v.index_select(0, rows) for v in cache.values]
    return out
