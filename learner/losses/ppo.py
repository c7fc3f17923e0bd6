"""The PPO-clip family: GRPO (the baseline), diffu-GRPO (d1) and AGRPO (ALGORITHMS.md section 3).

All three use the conditional clip of PPO on an estimated ratio r = exp(new - old):

    s(r, A) = min(r A, clip(r, 1 - eps, 1 + eps) A)

whose gradient is r A grad(new) where the first branch is the smaller, and 0 where the clip is active
((A > 0, r > 1 + eps) or (A < 0, r < 1 - eps)). With A < 0 and r > 1 + eps nothing bounds it: that is
the bypass region where estimation noise alone creates gradient spikes (DESIGN.md, "Why").

- GRPO, token level (g the groups of the batch, n_g their sizes, |o_i| the valid tokens of sample i):
      L = -(1/|g|) sum_g (1/n_g) sum_{i in g} (1/|o_i|) sum_j [s(r_ij, A_i) - beta k3_ij]
  sequence level: the same with one ratio per sample, r_i = exp(l_i - l_old_i), and no 1/|o_i|.
  k3_ij = exp(ref - new) - (ref - new) - 1, the KL estimator of d1 / TRL, with weight beta.
- diffu-GRPO (d1): GRPO at token level with eps = 0.5 and beta = 0.04, on the mean-field estimate.
- AGRPO (k sampled steps per sequence, step importance weights v_ij, 1 without importance sampling):
      L = -(1/|g|) sum_g 1/(k n_g) sum_{i in g} sum_j v_ij s(r_ij, A_i)
  One entry j per sampled step ([B, k] layout: new_logp is that step's log-prob) or per token revealed
  at a sampled step ([B, L] layout with token_mask; pass k). No KL (beta = 0 in the AGRPO code).

With a reference, the diagnostics add ``kl``: the mean k3 over valid entries.

Departures from the public code: the d1 / TRL code averages the per-sequence terms over the whole
batch, -(1/B) sum_i; with groups of equal size that is the formula above, which keeps the fixed 1/G
per group when groups differ in size. The log-ratio is not clamped before exp (GRPO's behaviour is the
baseline under study; the diagnostics are computed in float64 from the log-ratio).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from learner.diagnostics import LossTerms
from learner.losses.base import (
    CheckedInput,
    LossStep,
    PolicyLoss,
    SequenceReduce,
    k3_kl,
    register_loss,
    sequence_logp,
)

if TYPE_CHECKING:
    from system.config import AlgorithmConfig

__all__ = ["AGRPO", "GRPO", "DiffuGRPO", "clipped_surrogate"]


def clipped_surrogate(log_ratio: Tensor, advantages: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's min(r A, clip(r, 1-eps, 1+eps) A) per entry.

    Args:
        log_ratio: [B] or [B, L] (differentiable).
        advantages: [B] (broadcast over L).
    Returns:
        (surrogate like log_ratio, clipped_low, clipped_high): the bool masks say where the clip is
        active (its gradient is 0 there).
    """
    adv = advantages.reshape(-1, *([1] * (log_ratio.dim() - 1)))
    ratio = log_ratio.exp()
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - eps, 1.0 + eps) * adv)
    lr = log_ratio.detach()
    clipped_low = (adv < 0) & (lr < math.log(1.0 - eps))
    clipped_high = (adv > 0) & (lr > math.log1p(eps))
    return surrogate, clipped_low, clipped_high


def _check_eps(name: str, eps: float) -> None:
    if not 0.0 < eps < 1.0:
        raise ValueError(f"{name} loss: eps must be in (0, 1) (the clip range is [1 - eps, 1 + eps]), got {eps}")


def _sample_weights(log_ratio: Tensor, terms_clipped: Tensor, valid: Tensor, coef: Tensor,
                    num_groups: int, step_weights: Tensor | None = None) -> Tensor:
    """[B]: coefficient of A_i grad l_i in group i's term, sum_j v_ij r_ij 1[not clipped] * (per-row norm)."""
    ratio = log_ratio.detach().double().exp()
    w = torch.where(valid & ~terms_clipped, ratio, torch.zeros_like(ratio))
    if step_weights is not None:
        w = w * step_weights.double()
    if w.dim() == 2:
        w = w.sum(dim=1)
    return w * coef.double() * num_groups


@register_loss("grpo")
@dataclass
class GRPO(PolicyLoss):
    """GRPO with conditional clipping and a fixed 1/G (see the module docstring).

    Options: eps (clip range), level ('token' or 'sequence' ratio), kl_beta (k3 KL weight; needs
    ref_logp when > 0), sequence_reduce (how token estimates become l_i at sequence level).
    """

    eps: float = 0.2
    level: Literal["token", "sequence"] = "token"
    kl_beta: float = 0.0
    sequence_reduce: SequenceReduce = "sum"

    def __post_init__(self) -> None:
        _check_eps(self.name, self.eps)
        if self.level not in ("token", "sequence"):
            raise ValueError(f"{self.name} loss: level must be 'token' or 'sequence', got {self.level!r}")
        if not self.kl_beta >= 0.0:
            raise ValueError(f"{self.name} loss: kl_beta must be >= 0, got {self.kl_beta}")
        if self.sequence_reduce not in ("sum", "mean"):
            raise ValueError(f"{self.name} loss: sequence_reduce must be 'sum' or 'mean', got "
                             f"{self.sequence_reduce!r}")

    def uses_reference(self) -> bool:
        return self.kl_beta > 0.0

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> GRPO:
        return cls(eps=cfg.grpo_eps, level=cfg.grpo_level, kl_beta=cfg.kl_beta, sequence_reduce=cfg.sequence_reduce)

    def prepare(self, batch: CheckedInput) -> LossStep:
        new, old, ref, valid = batch.new, batch.old, batch.ref, batch.valid
        if self.level == "token" and new.dim() != 2:
            raise ValueError(f"{self.name} loss: token-level ratios need token-level estimates [B, L] with "
                             f"token_mask, got new_logp {list(new.shape)}; or use level 'sequence'")
        if self.level == "sequence" and new.dim() == 2:
            new, old = (sequence_logp(t, valid, self.sequence_reduce) for t in (new, old))
            ref = None if ref is None else sequence_logp(ref, valid, self.sequence_reduce)
            valid = torch.ones_like(new, dtype=torch.bool)
        groups, adv, beta, eps = batch.groups, batch.advantages, self.kl_beta, self.eps
        ref_t = ref if ref is not None else torch.zeros_like(old)  # only read when beta > 0 (ref checked)
        per_row = valid.sum(dim=1).clamp(min=1).to(new.dtype) if new.dim() == 2 else torch.ones_like(new)
        # weight of sample i's summed terms: 1 / (|g| n_g |o_i|)
        coef = 1.0 / (groups.num_groups * groups.expand(groups.sizes.to(new.dtype)) * per_row)
        coef_b = coef.reshape(-1, *([1] * (new.dim() - 1)))

        def objective(x: Tensor) -> Tensor:
            log_ratio = torch.where(valid, x - old, torch.zeros_like(x))
            term, _, _ = clipped_surrogate(log_ratio, adv, eps)
            if beta > 0.0:
                term = term - beta * k3_kl(ref_t, x)  # ref and x are 0 where not valid
            return -(torch.where(valid, term, torch.zeros_like(term)) * coef_b).sum()

        log_ratio = torch.where(valid, new.detach() - old, torch.zeros_like(old))
        _, low, high = clipped_surrogate(log_ratio, adv, eps)
        terms = LossTerms(
            log_ratio=log_ratio, valid=valid, advantages=adv, groups=groups, clipped_low=low,
            clipped_high=high, bypass_eps=eps,
            sample_weights=_sample_weights(log_ratio, low | high, valid, coef, groups.num_groups),
        )
        extra: dict[str, float] = {}
        if ref is not None:
            kl = k3_kl(ref, new.detach())[valid]
            extra["kl"] = float(kl.mean()) if kl.numel() else float("nan")
        return LossStep(x=new, objective=objective, terms=terms, extra=extra)


@register_loss("diffu_grpo")
@dataclass
class DiffuGRPO(GRPO):
    """diffu-GRPO (d1): token-level GRPO with eps = 0.5 and the k3 KL at beta = 0.04, meant for the
    mean-field one-step estimate (same mask seed for new, old and reference)."""

    eps: float = 0.5
    kl_beta: float = 0.04

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> DiffuGRPO:
        return cls(eps=cfg.diffu_grpo_eps, kl_beta=cfg.diffu_grpo_kl_beta)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.level != "token":
            raise ValueError(f"{self.name} loss is token level by definition (d1); got level {self.level!r}. "
                             "For sequence-level ratios use the grpo loss")


@register_loss("agrpo")
@dataclass
class AGRPO(PolicyLoss):
    """AGRPO: PPO clip on the per-token ratios at the k sampled denoising steps, weighted by the steps'
    importance weights, sum / (k G) (see the module docstring).

    Options: eps (clip range), k (sampled steps per sequence; None = new_logp.shape[1], the [B, k]
    layout with one entry per sampled step).
    """

    uses_step_weights = True
    eps: float = 0.2
    k: int | None = None

    def __post_init__(self) -> None:
        _check_eps(self.name, self.eps)
        if self.k is not None and self.k < 1:
            raise ValueError(f"{self.name} loss: k (sampled steps per sequence) must be >= 1, got {self.k}")

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> AGRPO:
        return cls(eps=cfg.agrpo_eps, k=cfg.agrpo_num_steps)

    def prepare(self, batch: CheckedInput) -> LossStep:
        new, old, valid, adv, groups, eps = batch.new, batch.old, batch.valid, batch.advantages, batch.groups, self.eps
        if new.dim() != 2:
            raise ValueError(f"{self.name} loss needs per-step estimates [B, k] (or per-token [B, L] with "
                             f"token_mask and k), got new_logp {list(new.shape)}")
        k = new.shape[1] if self.k is None else self.k
        steps = batch.step_weights if batch.step_weights is not None else valid.to(new.dtype)
        coef = 1.0 / (groups.num_groups * k * groups.expand(groups.sizes.to(new.dtype)))

        def objective(x: Tensor) -> Tensor:
            term, _, _ = clipped_surrogate(torch.where(valid, x - old, torch.zeros_like(x)), adv, eps)
            return -(steps * term * coef[:, None]).sum()

        log_ratio = torch.where(valid, new.detach() - old, torch.zeros_like(old))
        _, low, high = clipped_surrogate(log_ratio, adv, eps)
        terms = LossTerms(
            log_ratio=log_ratio, valid=valid, advantages=adv, groups=groups, clipped_low=low,
            clipped_high=high, bypass_eps=eps,
            sample_weights=_sample_weights(log_ratio, low | high, valid, coef, groups.num_groups, steps),
        )
        return LossStep(x=new, objective=objective, terms=terms, extra={})
