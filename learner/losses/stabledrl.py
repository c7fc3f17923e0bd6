"""StableDRL: unconditional clipping and self-normalised importance weights (ALGORITHMS.md section 3).

With a sequence-level estimated ratio r_i = exp(l_i - l_old_i) per sample:

    w_i     = clip(r_i, lo, hi)                 the same bounds whatever the sign of A_i
    w_bar_i = w_i / sum_{j in g(i)} w_j         = softmax of log w inside the group
    L       = -(1/|g|) sum_g sum_{i in g} stopgrad(w_bar_i) A_i l_i(theta)

l_i is the differentiable likelihood surrogate (``surrogate`` when given, e.g. SPG's EUBO mix for
A < 0; otherwise new_logp, reduced per sequence when token level). Because the weights are detached,
non-negative and sum to 1 in each group, each group's update sum_i w_bar_i A_i grad l_i is a convex
combination of the per-sample gradients A_i grad l_i: its norm is at most max_i |A_i| ||grad l_i||
whatever the ratio noise. A clip bound caps a weight; it never zeroes a gradient (unlike PPO's clip).

Default bounds (lo, hi) = (none, 5): the official code clamps log w at log 5 before the softmax;
``StableDRL.two_sided(eps)`` gives the clip(r, 1 - eps, 1 + eps) of third-party summaries. The weights
are computed in log space (clamp log r, then a group softmax), so ratios of 1e6 or 1e-300 are exact.
Departures from the official code: the bounds are options; no KL / reference model (as the official
code). ``bypass_eps`` only sets the diagnostic's bypass region r > 1 + eps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from learner.advantages import Groups
from learner.diagnostics import LossTerms
from learner.losses.base import (
    CheckedInput,
    LossStep,
    PolicyLoss,
    SequenceReduce,
    register_loss,
    sequence_logp,
)

if TYPE_CHECKING:
    from system.config import AlgorithmConfig

__all__ = ["StableDRL", "self_normalised_weights"]


def self_normalised_weights(log_ratio: Tensor, groups: Groups, lo: float | None, hi: float | None) -> Tensor:
    """[B] log-ratios -> [B] detached weights clip(r, lo, hi) / sum_{j in group} clip(r_j, lo, hi)."""
    log_lo = -math.inf if lo is None else math.log(lo)
    log_hi = math.inf if hi is None else math.log(hi)
    log_w = log_ratio.detach().clamp(min=log_lo, max=log_hi)
    return groups.softmax(log_w)


@register_loss("stabledrl")
@dataclass
class StableDRL(PolicyLoss):
    """StableDRL (see the module docstring).

    Options: clip_low / clip_high (ratio bounds of the weight, None = unbounded on that side),
    sequence_reduce (how token estimates become l_i: 'sum' or 'mean'), bypass_eps (diagnostic only).
    """

    uses_surrogate = True
    clip_low: float | None = None
    clip_high: float | None = 5.0
    sequence_reduce: SequenceReduce = "sum"
    bypass_eps: float = 0.2

    def __post_init__(self) -> None:
        for field in ("clip_low", "clip_high"):
            value = getattr(self, field)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{self.name} loss: {field} must be a positive ratio bound or None, got {value}")
        if self.clip_low is not None and self.clip_high is not None and self.clip_low >= self.clip_high:
            raise ValueError(f"{self.name} loss: clip_low ({self.clip_low}) must be below clip_high "
                             f"({self.clip_high})")
        if self.sequence_reduce not in ("sum", "mean"):
            raise ValueError(f"{self.name} loss: sequence_reduce must be 'sum' or 'mean', got "
                             f"{self.sequence_reduce!r}")
        if not self.bypass_eps > 0:
            raise ValueError(f"{self.name} loss: bypass_eps must be > 0, got {self.bypass_eps}")

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> StableDRL:
        return cls(clip_low=cfg.clip_low, clip_high=cfg.clip_high, sequence_reduce=cfg.sequence_reduce,
                   bypass_eps=cfg.bypass_eps)

    @classmethod
    def two_sided(cls, eps: float = 0.2, **options: object) -> StableDRL:
        """The symmetric variant: weights clipped to [1 - eps, 1 + eps] (bypass region r > 1 + eps)."""
        if not 0.0 < eps < 1.0:
            raise ValueError(f"stabledrl loss: two-sided eps must be in (0, 1), got {eps}")
        return cls(clip_low=1.0 - eps, clip_high=1.0 + eps, bypass_eps=eps, **options)  # type: ignore[arg-type]

    def prepare(self, batch: CheckedInput) -> LossStep:
        groups, adv, valid = batch.groups, batch.advantages, batch.valid
        new_seq = sequence_logp(batch.new, valid, self.sequence_reduce)
        old_seq = sequence_logp(batch.old, valid, self.sequence_reduce)
        log_ratio = new_seq.detach() - old_seq
        w_bar = self_normalised_weights(log_ratio, groups, self.clip_low, self.clip_high)
        coef = (w_bar * adv / groups.num_groups).detach()
        surrogate = batch.surrogate if batch.surrogate is not None else new_seq

        def objective(x: Tensor) -> Tensor:
            return -(coef * x).sum()

        everyone = torch.ones_like(log_ratio, dtype=torch.bool)
        low = (log_ratio < math.log(self.clip_low)) if self.clip_low is not None else ~everyone
        high = (log_ratio > math.log(self.clip_high)) if self.clip_high is not None else ~everyone
        terms = LossTerms(log_ratio=log_ratio, valid=everyone, advantages=adv, groups=groups,
                          clipped_low=low, clipped_high=high, sample_weights=w_bar, bypass_eps=self.bypass_eps)
        return LossStep(x=surrogate, objective=objective, terms=terms, extra={})
