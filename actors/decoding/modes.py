"""Names of the decoding modes, and which of them sample from the policy itself.

A mode is ``<remasking>/<cache>``: the unmasking rule (``low_confidence``, ``random``: a fixed schedule;
``threshold``, ``factor``: parallel, `actors.decoding.parallel`) and the cache (``no_cache``: every step
runs the whole sequence; ``block_cache``: the exact cache of block-attention models; ``prefix_cache`` /
``dual_cache``: Fast-dLLM's approximate caches of full-attention models, `actors.decoding.caches`).

Every mode without an approximate cache computes each step's logits exactly as the policy does on that
state, so the log-probs it records are log pi_old (AGRPO may reuse them). An approximate cache computes
them from stale keys: the rollout is sampled from a nearby distribution, and rollouts say so
(``decode_stats["approximate_cache"]``), so that the learner recomputes what it needs (issue 18).
"""

from __future__ import annotations

from system.config import DecodingConfig
from system.models.base import AttentionFamily

APPROXIMATE_CACHES = ("prefix", "dual")


def cache_kind(attention: AttentionFamily, params: DecodingConfig) -> str:
    """``no_cache``, ``block_cache``, ``prefix_cache`` or ``dual_cache`` for a model of this attention."""
    if attention == "block":
        return "block_cache" if params.use_cache else "no_cache"
    return f"{params.cache}_cache" if params.cache in APPROXIMATE_CACHES else "no_cache"


def decoder_mode(attention: AttentionFamily, params: DecodingConfig) -> str:
    """The mode name recorded with every rollout, e.g. ``threshold/dual_cache``."""
    return f"{params.remasking}/{cache_kind(attention, params)}"


def is_approximate(mode: str) -> bool:
    """Whether the mode's recorded log-probs differ from the policy's (an approximate cache)."""
    return mode.split("/")[-1] in {f"{c}_cache" for c in APPROXIMATE_CACHES}
