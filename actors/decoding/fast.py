"""Fast rollout decoding for full-attention dLLMs (LLaDA, Dream, the tiny model): Fast-dLLM's approximate
prefix / dual KV cache refreshed once per block (Wu et al. 2025, section 3.2; `actors.decoding.caches`),
combined with any unmasking rule, the parallel ones included (`actors.decoding.parallel`).

The decoder is the reference sampler (`actors.decoding.reference`) with one change: where a step's
logits come from. Per block, the first step runs the whole sequence (its logits are exact) and stores
every position's keys and values; the later steps run only the block (``dual``) or the block and the
masked suffix (``prefix``) over the stored keys of the rest. Sampling, the reveal rule, the trajectory
record and early stopping are the reference's, so a mode differs from the reference only by the cache.

Rows that have finished the block early (parallel rules) leave the step's batch, and their stored keys
with them, so each row is decoded exactly as it would be alone under the same approximation.

Dream's logits are shifted (position i is scored by the output at i - 1), so its window starts one
position earlier and the call's first logit is dropped.

`build_decoder` picks the decoder for a model and a ``decoding`` section; block-attention models get the
reference decoder with its exact block cache (``decoding.cache`` does not apply to them).
"""

from __future__ import annotations

import torch

from actors.decoding.caches import WindowCache, select_rows
from actors.decoding.reference import ReferenceDecoder, _Batch
from system.config import DecodingConfig
from system.models.base import DiffusionModel, KVCache


class FastDecoder(ReferenceDecoder):
    """The reference sampler over Fast-dLLM's approximate ``prefix`` or ``dual`` cache (module docstring)."""

    def __init__(self, model: DiffusionModel, params: DecodingConfig) -> None:
        super().__init__(model, params)
        if model.attention != "full":
            raise ValueError("FastDecoder is for full-attention models; block models use the exact block cache "
                             "(decoding.use_cache) of ReferenceDecoder")
        if params.cache not in ("prefix", "dual"):
            raise ValueError(f"FastDecoder needs decoding.cache prefix or dual, got {params.cache!r}")
        self.lead = 1 if model.spec.logits_shift else 0

    def _block_logits(
        self, b: _Batch, rows: torch.Tensor, lo: int, hi: int, i: int, cache: KVCache | None
    ) -> torch.Tensor:
        """Step ``i`` of block ``[lo, hi)``: a refresh at ``i = 0``, a window over the stored keys after."""
        if i == 0:
            b.window, b.window_rows = KVCache(), rows
            b.passes += rows.numel()
            b.tokens += rows.numel() * b.x.shape[1]
            logits = self.model(b.x[rows], attention_mask=b.attn[rows], position_ids=b.pos[rows],
                                cache=b.window, store_cache=True)
            return logits[:, lo:hi].float()
        assert b.window is not None and b.window_rows is not None
        if rows.numel() != b.window_rows.numel():  # pending rows only shrink inside a block
            b.window = select_rows(b.window, torch.searchsorted(b.window_rows, rows))
            b.window_rows = rows
        q_lo = lo - self.lead
        q_hi = hi if self.params.cache == "dual" else b.x.shape[1]
        view = WindowCache(b.window, q_lo, q_hi, self.lead)
        b.passes += rows.numel()
        b.tokens += rows.numel() * (q_hi - q_lo)
        logits = self.model(b.x[rows, q_lo:q_hi], attention_mask=b.attn[rows], position_ids=b.pos[rows, q_lo:q_hi],
                            cache=view)
        return logits[:, self.lead:self.lead + hi - lo].float()


def build_decoder(model: DiffusionModel, params: DecodingConfig) -> ReferenceDecoder:
    """The decoder ``decoding`` asks for on this model: `FastDecoder` for an approximate cache on a
    full-attention model, else the reference (which handles the parallel rules and the block cache)."""
    if model.spec.extra.get("noise") == "uniform":  # DiffusionGemma: no mask token, its own sampler
        from actors.decoding.uniform_block import UniformBlockDecoder

        return UniformBlockDecoder(model, params)  # type: ignore[arg-type, return-value]
    if params.cache != "none" and model.attention == "full":
        return FastDecoder(model, params)
    return ReferenceDecoder(model, params)
