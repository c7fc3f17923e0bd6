"""The policy-loss contract: its input and output dataclasses, the input checks done once at the
boundary, the base class that turns a loss's pure objective into a loss value plus diagnostics, and the
registry losses are chosen from by name.

A loss sees plain tensors only (never a model): the likelihood estimates of the new and old policy
(and of a reference model for the k3 KL), the advantages, the group of each sample. Estimates may be
token level ([B, L] with a bool ``token_mask``) or sequence level ([B]).

Each loss implements ``prepare(batch) -> LossStep``: the differentiable tensor ``x`` its gradient flows
through (new_logp for the PPO family, the surrogate l_i for StableDRL), a pure ``objective(x) -> scalar``
closure over detached quantities, and the ``LossTerms`` the diagnostics read. ``__call__`` returns
``objective(x)`` and the diagnostics, whose gradient weights |dL/dx| come from one autograd call on a
detached copy of ``x`` (so they are exactly the coefficients of the update, whatever the loss).

Groups must be whole inside one call: the group normalisations (1/G, self-normalised weights) are
computed over the samples present. Nothing here draws random numbers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

from learner.advantages import Groups
from learner.diagnostics import LossTerms, gradient_weights, policy_diagnostics

if TYPE_CHECKING:
    from system.config import AlgorithmConfig

__all__ = ["LOSSES", "CheckedInput", "LossStep", "PolicyLoss", "PolicyLossInput", "PolicyLossOutput",
           "get_loss", "k3_kl", "register_loss", "sequence_logp"]

SequenceReduce = Literal["sum", "mean"]


@dataclass
class PolicyLossInput:
    """What every policy loss reads. B samples, L tokens (token level) or none (sequence level).

    Attributes:
        new_logp: [B, L] (with ``token_mask``) or [B] log-likelihood estimates under theta; carries grad.
        old_logp: same shape, under theta_old (detached here whatever it carries).
        advantages: [B].
        group_ids: [B] integer: which group (prompt) each sample belongs to.
        token_mask: [B, L] bool, True = the token counts (None: all count). Token level only.
        ref_logp: same shape as ``new_logp``, the reference model (for the k3 KL).
        surrogate: [B] differentiable likelihood surrogate l_i(theta) when it differs from new_logp
            (e.g. SPG's EUBO mix for A < 0). StableDRL only; default: new_logp reduced per sequence.
        step_weights: [B, L] AGRPO importance weights of the sampled steps (>= 0). AGRPO only.
    """

    new_logp: Tensor
    old_logp: Tensor
    advantages: Tensor
    group_ids: Tensor
    token_mask: Tensor | None = None
    ref_logp: Tensor | None = None
    surrogate: Tensor | None = None
    step_weights: Tensor | None = None


@dataclass
class PolicyLossOutput:
    loss: Tensor  # scalar, carries grad
    diagnostics: dict[str, float]


@dataclass
class CheckedInput:
    """A validated ``PolicyLossInput``: float32 (float64 kept), entries outside ``valid`` set to 0, old / ref / advantages
    detached, groups built."""

    new: Tensor  # [B] or [B, L]
    old: Tensor
    valid: Tensor  # bool, same shape
    advantages: Tensor  # [B]
    groups: Groups
    ref: Tensor | None
    surrogate: Tensor | None  # [B]
    step_weights: Tensor | None  # [B, L], 0 where not valid


@dataclass
class LossStep:
    x: Tensor
    objective: Callable[[Tensor], Tensor]
    terms: LossTerms
    extra: dict[str, float]


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def _require(cond: bool, loss: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{loss} loss: {msg}")


def _check_finite(t: Tensor, valid: Tensor, loss: str, field: str) -> None:
    bad = valid & ~torch.isfinite(t.detach())
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{loss} loss: {field}{list(where)} = {t.detach()[where].item()} is not finite "
                         f"({int(bad.sum())} such entries); the likelihood estimate diverged (check the "
                         "model's logits and dtype) or an unscored token is missing from token_mask")


def _float(t: Tensor) -> Tensor:
    """float32, or float64 when given (half precision is too coarse for ratios)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _masked(t: Tensor, valid: Tensor) -> Tensor:
    t = _float(t)
    return torch.where(valid, t, torch.zeros_like(t))


def _check_shapes(inp: PolicyLossInput, loss: str) -> tuple[int, Tensor]:
    """Shapes and dtypes; returns B and the valid mask."""
    new = inp.new_logp
    _require(isinstance(new, Tensor) and new.dim() in (1, 2) and new.is_floating_point(), loss,
             f"new_logp must be a float tensor [B] or [B, L], got "
             f"{_shape(new) if isinstance(new, Tensor) else type(new).__name__}")
    bsz = new.shape[0]
    for field in ("old_logp", "ref_logp"):
        value = getattr(inp, field)
        _require(value is None or (isinstance(value, Tensor) and value.shape == new.shape), loss,
                 f"{field} has shape {_shape(value) if isinstance(value, Tensor) else value!r}, "
                 f"new_logp {_shape(new)}: both estimates must score the same entries")
    _require(isinstance(inp.advantages, Tensor) and _shape(inp.advantages) == [bsz], loss,
             f"advantages must be [B] = [{bsz}], got {_shape(inp.advantages)}")
    for field in ("surrogate",):
        value = getattr(inp, field)
        _require(value is None or _shape(value) == [bsz], loss,
                 f"{field} must be [B] = [{bsz}], got {_shape(value) if value is not None else None}")
    _require(inp.step_weights is None or inp.step_weights.shape == new.shape, loss,
             f"step_weights must have new_logp's shape {_shape(new)}, got "
             f"{_shape(inp.step_weights) if inp.step_weights is not None else None}")
    mask = inp.token_mask
    if mask is None:
        return bsz, torch.ones(new.shape, dtype=torch.bool, device=new.device)
    _require(new.dim() == 2, loss, "token_mask given for sequence-level new_logp [B]; drop it or pass "
             "token-level estimates [B, L]")
    _require(mask.shape == new.shape, loss, f"token_mask has shape {_shape(mask)}, new_logp {_shape(new)}")
    _require(mask.dtype == torch.bool, loss, f"token_mask must be bool, got {mask.dtype}; use mask.bool()")
    return bsz, mask


def check_input(inp: PolicyLossInput, loss: str) -> CheckedInput:
    """Validate ``inp`` at the boundary (shapes, dtypes, finiteness at valid entries)."""
    bsz, valid = _check_shapes(inp, loss)
    groups = Groups.from_ids(inp.group_ids, batch_size=bsz, name=f"{loss} loss: group_ids")
    for field in ("new_logp", "old_logp", "ref_logp"):
        if getattr(inp, field) is not None:
            _check_finite(getattr(inp, field), valid, loss, field)
    everything = torch.ones(bsz, dtype=torch.bool, device=valid.device)
    _check_finite(inp.advantages, everything, loss, "advantages")
    if inp.surrogate is not None:
        _check_finite(inp.surrogate, everything, loss, "surrogate")
    step_weights = None
    if inp.step_weights is not None:
        _check_finite(inp.step_weights, valid, loss, "step_weights")
        step_weights = _masked(inp.step_weights.detach(), valid)
        _require(bool((step_weights >= 0).all()), loss, "step_weights must be >= 0 (importance weights)")
    return CheckedInput(
        new=_masked(inp.new_logp, valid), old=_masked(inp.old_logp.detach(), valid), valid=valid,
        advantages=_float(inp.advantages.detach()), groups=groups,
        ref=None if inp.ref_logp is None else _masked(inp.ref_logp.detach(), valid),
        surrogate=None if inp.surrogate is None else _float(inp.surrogate), step_weights=step_weights,
    )


def sequence_logp(x: Tensor, valid: Tensor, reduce: SequenceReduce) -> Tensor:
    """[B, L] -> [B]: sum (the sequence log-likelihood) or mean over valid tokens (a row with none
    gives 0); [B] is returned as is. ``x`` must already be 0 where not valid."""
    if x.dim() == 1:
        return x
    total = x.sum(dim=1)
    if reduce == "sum":
        return total
    return total / valid.sum(dim=1).clamp(min=1).to(x.dtype)


def k3_kl(ref: Tensor, new: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref) per entry: exp(ref - new) - (ref - new) - 1
    (>= 0, unbiased when the entries are sampled from pi_theta)."""
    d = ref - new
    return d.exp() - d - 1.0


class PolicyLoss(ABC):
    """Base class of the registered losses (dataclasses whose fields are the loss options)."""

    name: ClassVar[str]
    uses_surrogate: ClassVar[bool] = False
    uses_step_weights: ClassVar[bool] = False

    def uses_reference(self) -> bool:
        return False

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: AlgorithmConfig) -> PolicyLoss:
        """This loss with its options from the ``algorithm`` config section."""

    def __call__(self, inp: PolicyLossInput) -> PolicyLossOutput:
        batch = self._check(inp)
        step = self.prepare(batch)
        loss = step.objective(step.x)
        diagnostics = policy_diagnostics(step.terms, gradient_weights(step.objective, step.x))
        diagnostics.update(step.extra)
        return PolicyLossOutput(loss=loss, diagnostics=diagnostics)

    def _check(self, inp: PolicyLossInput) -> CheckedInput:
        name = self.name
        if inp.surrogate is not None and not self.uses_surrogate:
            raise ValueError(f"{name} loss: got a surrogate, which only stabledrl uses; its gradient flows "
                             "through new_logp. Drop the surrogate or choose stabledrl")
        if inp.step_weights is not None and not self.uses_step_weights:
            raise ValueError(f"{name} loss: got step_weights, which only agrpo uses; drop them or choose agrpo")
        if inp.ref_logp is not None and not self.uses_reference():
            raise ValueError(f"{name} loss: got ref_logp but this loss has no KL term (kl_beta 0 or none "
                             "in this loss); skip the reference forward pass, or set kl_beta > 0 (grpo)")
        if inp.ref_logp is None and self.uses_reference():
            raise ValueError(f"{name} loss: kl_beta > 0 needs ref_logp (the reference model's estimate "
                             "on the same entries); pass it, or set algorithm.kl_beta to 0")
        return check_input(inp, name)

    @abstractmethod
    def prepare(self, batch: CheckedInput) -> LossStep:
        """The differentiable tensor, the objective over it, and the diagnostics' terms."""


LOSSES: dict[str, type[PolicyLoss]] = {}


def register_loss(name: str) -> Callable[[type[PolicyLoss]], type[PolicyLoss]]:
    def wrap(cls: type[PolicyLoss]) -> type[PolicyLoss]:
        if name in LOSSES:
            raise ValueError(f"policy loss {name!r} registered twice ({LOSSES[name].__name__}, {cls.__name__})")
        cls.name = name
        LOSSES[name] = cls
        return cls

    return wrap


def get_loss(name: str, **options: Any) -> PolicyLoss:
    """The registered loss ``name`` built with ``options`` (its dataclass fields)."""
    if name not in LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; choose one of {', '.join(sorted(LOSSES))}")
    cls = LOSSES[name]
    allowed = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"policy loss {name!r}: unknown option(s) {', '.join(unknown)}; "
                         f"its options are {', '.join(allowed)}")
    return cls(**options)
