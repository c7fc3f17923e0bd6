"""Instability diagnostics of a policy-loss step, computed from tensors, and the gradient-spike detector
the learner runs on the pre-clip gradient norm (ALGORITHMS.md section 3, "Diagnostics").

Every loss in ``learner.losses`` describes its step with a ``LossTerms`` (detached tensors) plus the
per-element gradient weights |dL/dx_e| of its loss with respect to its differentiable per-sample
(or per-token) likelihood inputs x, and ``policy_diagnostics`` turns them into floats:

- ``ratio_mean / ratio_std / ratio_max / ratio_p99``: of the raw estimated ratio exp(new - old) over
  valid entries (before any clipping; computed in float64 from the log-ratio, so a log-ratio of 500 is
  reported, not inf); ``log_ratio_mean / log_ratio_std``: the noise floor at theta = theta_old.
- ``clip_frac_low / clip_frac_high``: fraction of valid entries where the loss's lower / upper clip is
  active (PPO-style losses: (A < 0, r < 1-eps) / (A > 0, r > 1+eps), where the gradient is zeroed;
  StableDRL: r below / above its bounds, where the weight is capped but the gradient kept).
- ``bypass_frac``: fraction of valid entries with A < 0 and r > 1 + eps, the region that GRPO's
  conditional clip leaves unbounded.
- ``bypass_grad_share``: the bypass entries' share of the gradient, defined as
      sum_{e in bypass} |dL/dx_e| / sum_e |dL/dx_e|,
  the share of the total absolute coefficient mass in grad L = sum_e (dL/dx_e) grad x_e. It is the
  share of the gradient norm when the per-entry gradients grad x_e have equal norms and point the same
  way, and it costs one autograd call on the B x L likelihood tensor (no per-sample backward through
  the model). For GRPO a single bypass sample with r = 1e6 takes a share close to 1; for StableDRL its
  coefficient is at most max|A| times its bounded, normalised weight.
- ``ess`` (mean over groups of 1 / sum_i w_bar_i^2 with w_bar the sample weights normalised in their
  group; 0 for a group whose weights are all 0) and ``ess_fraction`` (ess / group size, averaged):
  equals G for equal weights and 1 for a one-hot weight.
- ``weight_max``: the largest sample weight, where the weight of sample i is the coefficient of
  A_i grad l_i in its group's term (StableDRL: w_bar_i, <= 1; GRPO: r_i 1[unclipped] / G, unbounded).
- ``grad_weight_max``: the largest per-sample |dL/dl_i| (summed over a sample's tokens) times the
  number of groups, i.e. |A_i| times the weight above: the quantity of the toy illustration of
  ALGORITHMS.md section 3 (GRPO 0.21 / 1.24 / 40.3 at sigma 0.5 / 1 / 2; StableDRL about 0.066).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from learner.advantages import Groups

if TYPE_CHECKING:
    from system.config import AlgorithmConfig

__all__ = ["LossTerms", "SpikeDetector", "bypass_grad_share", "bypass_mask", "gradient_weights",
           "group_ess", "policy_diagnostics", "quantile", "ratio_stats"]


@dataclass
class LossTerms:
    """What a loss tells the diagnostics about one step (all detached).

    Attributes:
        log_ratio: [B] or [B, L] raw estimated log-ratio new - old (0 where not valid).
        valid: same shape, bool: entries that count (token mask; all True for sequence level).
        advantages: [B].
        groups: the batch's groups.
        clipped_low / clipped_high: same shape as log_ratio, bool: where the loss's clip is active.
        sample_weights: [B] >= 0, the coefficient of A_i grad l_i in its group's term.
        bypass_eps: the eps of the bypass region r > 1 + eps.
    """

    log_ratio: Tensor
    valid: Tensor
    advantages: Tensor
    groups: Groups
    clipped_low: Tensor
    clipped_high: Tensor
    sample_weights: Tensor
    bypass_eps: float


def quantile(values: Tensor, q: float) -> float:
    """Nearest-rank quantile of a 1-D tensor (the ceil(q n)-th smallest); no size limit, unlike
    ``torch.quantile``. NaN for an empty tensor."""
    n = values.numel()
    if n == 0:
        return float("nan")
    k = min(n, max(1, math.ceil(q * n)))
    return float(values.flatten().kthvalue(k).values)


def ratio_stats(log_ratio: Tensor, valid: Tensor) -> dict[str, float]:
    """Ratio and log-ratio statistics over the valid entries (population std; float64)."""
    lr = log_ratio.detach()[valid].double()
    if lr.numel() == 0:
        nan = float("nan")
        return dict.fromkeys(("ratio_mean", "ratio_std", "ratio_max", "ratio_p99",
                              "log_ratio_mean", "log_ratio_std"), nan)
    ratio = lr.exp()
    return {
        "ratio_mean": float(ratio.mean()),
        "ratio_std": float(ratio.std(correction=0)),
        "ratio_max": float(ratio.max()),
        "ratio_p99": quantile(ratio, 0.99),
        "log_ratio_mean": float(lr.mean()),
        "log_ratio_std": float(lr.std(correction=0)),
    }


def bypass_mask(log_ratio: Tensor, advantages: Tensor, valid: Tensor, eps: float) -> Tensor:
    """[B] or [B, L] bool: valid entries with A < 0 and r > 1 + eps (``advantages`` is [B])."""
    adv = advantages.detach().reshape(-1, *([1] * (log_ratio.dim() - 1)))
    return valid & (adv < 0) & (log_ratio.detach() > math.log1p(eps))


def gradient_weights(objective: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """|dL/dx|, same shape as ``x``, where L = objective(x) is a scalar.

    Evaluated on a detached leaf copy of ``x`` (the caller's graph is not touched), with grad enabled
    even inside ``torch.no_grad()``.
    """
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = objective(leaf)
        if not out.requires_grad:  # L does not depend on x
            return torch.zeros_like(leaf)
        (grad,) = torch.autograd.grad(out, leaf, allow_unused=True)
    return torch.zeros_like(leaf) if grad is None else grad.abs()


def bypass_grad_share(grad_weights: Tensor, bypass: Tensor) -> float:
    """sum of |dL/dx_e| over bypass entries / sum over all entries (0 when the gradient is 0)."""
    total = float(grad_weights.double().sum())
    if total == 0.0:
        return 0.0
    return float(grad_weights[bypass].double().sum()) / total


def group_ess(weights: Tensor, groups: Groups) -> Tensor:
    """[B] non-negative weights -> [num_groups] effective sample size 1 / sum_i w_bar_i^2, with
    w_bar_i = w_i / sum_{j in group} w_j (0 for a group whose weights sum to 0)."""
    w = weights.detach().double()
    total = groups.sum(w)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    w_bar = w / groups.expand(safe)
    sq = groups.sum(w_bar**2)
    return torch.where(total > 0, 1.0 / sq.clamp(min=1e-300), torch.zeros_like(sq))


def _fraction(mask: Tensor, valid: Tensor) -> float:
    count = int(valid.sum())
    return float((mask & valid).sum()) / count if count else float("nan")


def policy_diagnostics(terms: LossTerms, grad_weights: Tensor) -> dict[str, float]:
    """All the floats of the module docstring. ``grad_weights``: |dL/dx|, [B] or [B, L] like
    ``terms.log_ratio`` (0 at invalid entries)."""
    valid = terms.valid
    out = ratio_stats(terms.log_ratio, valid)
    bypass = bypass_mask(terms.log_ratio, terms.advantages, valid, terms.bypass_eps)
    gw = grad_weights.detach().double()
    per_sample = gw if gw.dim() == 1 else gw.sum(dim=1)
    ess = group_ess(terms.sample_weights, terms.groups)
    out.update({
        "clip_frac_low": _fraction(terms.clipped_low, valid),
        "clip_frac_high": _fraction(terms.clipped_high, valid),
        "bypass_frac": _fraction(bypass, valid),
        "bypass_grad_share": bypass_grad_share(gw, bypass),
        "ess": float(ess.mean()),
        "ess_fraction": float((ess / terms.groups.sizes.double()).mean()),
        "weight_max": float(terms.sample_weights.detach().max()),
        "grad_weight_max": float(per_sample.max()) * terms.groups.num_groups,
        "num_groups": float(terms.groups.num_groups),
    })
    return out


class SpikeDetector:
    """Flags gradient spikes: a pre-clip gradient norm above ``factor`` times the running median of
    the last ``window`` norms. The first ``min_history`` norms are only recorded (no median yet).
    A non-finite norm is always a spike and is not recorded.
    """

    def __init__(self, factor: float = 5.0, window: int = 100, min_history: int = 10) -> None:
        if not factor > 1.0:
            raise ValueError(f"spike factor must be > 1 (a norm above factor x median is a spike), got {factor}")
        if window < 1 or not 1 <= min_history <= window:
            raise ValueError(f"need window >= 1 and 1 <= min_history <= window, got window={window}, "
                             f"min_history={min_history}")
        self.factor = factor
        self.min_history = min_history
        self._norms: deque[float] = deque(maxlen=window)
        self.num_spikes = 0

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> SpikeDetector:
        """From ``algorithm.spike_factor`` / ``algorithm.spike_window`` (median after min(10, window) norms)."""
        return cls(factor=cfg.spike_factor, window=cfg.spike_window, min_history=min(10, cfg.spike_window))

    @property
    def median(self) -> float | None:
        """Running median of the recorded norms (None before ``min_history`` of them)."""
        if len(self._norms) < self.min_history:
            return None
        return statistics.median(self._norms)

    def observe(self, grad_norm: float) -> bool:
        """Record one pre-clip gradient norm; True if it is a spike against the norms before it."""
        grad_norm = float(grad_norm)
        if not math.isfinite(grad_norm):
            self.num_spikes += 1
            return True
        median = self.median
        spike = median is not None and grad_norm > self.factor * median
        self._norms.append(grad_norm)
        self.num_spikes += int(spike)
        return spike

    def state_dict(self) -> dict[str, Any]:
        return {"norms": list(self._norms), "num_spikes": self.num_spikes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._norms.clear()
        self._norms.extend(float(v) for v in state["norms"])
        self.num_spikes = int(state["num_spikes"])
