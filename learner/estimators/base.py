"""The estimator contract: the batch an estimator reads (`EstimatorBatch`), what it returns
(`LikelihoodEstimate`), the base class that turns one random draw into coupled estimates for several
models (new / old / reference), and the forward pass shared by the mask-based estimators.

Every estimator splits into two halves:

- ``draw(spec, batch, generator)``: all of its randomness (masks, noise levels, sampled steps), drawn
  from the explicit ``torch.Generator`` only (on its device, then moved to the batch's), and returned as
  a plain dataclass; ``spec`` (the model's `ModelSpec`) gives the mask and EOS ids;
- ``score(model, batch, draw)``: a deterministic function of the model and the draw.

The coupling of new and old estimates is then only a question of which draws they share:
``independent`` scores each model on its own draw, ``shared`` (and ``complementary``, whose draw already
holds the pairs m / 1 - m) scores every model on the same draw, so two models with equal weights give
bitwise-equal estimates and the ratio is exactly 1.

Completion tokens whose ``completion_mask`` is False (e.g. EOS filled after an early stop) are never
scored; the mask-based estimators also always mask them in the input, so the estimate is of the
(marginal) likelihood of the scored tokens and does not see the length of the padding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from system.diffusion import positions_from_padding
from system.models.base import DiffusionModel, ModelSpec

COUPLINGS = ("independent", "shared", "complementary")


@dataclass
class EstimatorBatch:
    """One micro-batch of rollouts (CPU or device tensors). B rows, P prompt, L completion tokens."""

    prompt_ids: Tensor  # [B, P] left-padded
    prompt_mask: Tensor  # [B, P] 1 = real token
    completion_ids: Tensor  # [B, L]
    completion_mask: Tensor  # [B, L] bool, True = token counts (is scored)
    unmask_step: Tensor | None = None  # [B, L] long (AGRPO)
    old_logprobs: Tensor | None = None  # [B, L] generation-time log-probs (AGRPO old policy)
    entropies: Tensor | None = None  # [B, L] (AGRPO entropy importance sampling)

    def to(self, device: torch.device | str) -> EstimatorBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return EstimatorBatch(**{k: v.to(device) if v is not None else None for k, v in moved.items()})

    def validate(self, vocab_size: int | None = None) -> None:
        """Check shapes, dtypes and id ranges at the boundary; raise ValueError naming field and fix."""
        bsz, plen = _shape2(self.prompt_ids, "prompt_ids")
        _, glen = _shape2(self.completion_ids, "completion_ids")
        if _shape2(self.prompt_mask, "prompt_mask") != (bsz, plen):
            raise ValueError(
                f"EstimatorBatch.prompt_mask has shape {list(self.prompt_mask.shape)}, prompt_ids {[bsz, plen]}; "
                "build both with system.diffusion.left_pad"
            )
        if self.completion_ids.shape[0] != bsz:
            raise ValueError(
                f"EstimatorBatch.completion_ids has {self.completion_ids.shape[0]} rows, prompt_ids {bsz}"
            )
        for name in ("completion_mask", "unmask_step", "old_logprobs", "entropies"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (bsz, glen):
                raise ValueError(
                    f"EstimatorBatch.{name} has shape {list(value.shape)}; expected {[bsz, glen]} "
                    "like completion_ids"
                )
        for name in ("prompt_ids", "completion_ids"):
            ids = getattr(self, name)
            if ids.dtype != torch.long:
                raise ValueError(f"EstimatorBatch.{name} must be int64 token ids, got {ids.dtype}")
            if vocab_size is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
                raise ValueError(
                    f"EstimatorBatch.{name} holds ids in [{int(ids.min())}, {int(ids.max())}], outside the "
                    f"model's vocabulary [0, {vocab_size}); the rollouts come from another tokenizer/model"
                )
        if self.completion_mask.dtype != torch.bool:
            raise ValueError(
                f"EstimatorBatch.completion_mask must be bool, got {self.completion_mask.dtype}; use mask.bool()"
            )


def _shape2(t: Tensor, name: str) -> tuple[int, int]:
    if not isinstance(t, Tensor) or t.dim() != 2:
        shape = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"EstimatorBatch.{name} must be a 2D tensor [B, length], got {shape}")
    return int(t.shape[0]), int(t.shape[1])


def batch_from_decode(out: Any, score_filled: bool = False) -> EstimatorBatch:
    """An `EstimatorBatch` from a `actors.decoding.reference.DecodeOutput`; tokens the decoder filled
    with EOS after an early stop are not scored unless ``score_filled``."""
    completion_mask = torch.ones_like(out.filled) if score_filled else ~out.filled
    return EstimatorBatch(
        prompt_ids=out.prompt_ids, prompt_mask=out.prompt_mask, completion_ids=out.completion_ids,
        completion_mask=completion_mask.bool(), unmask_step=out.unmask_step, old_logprobs=out.logprobs,
        entropies=out.entropies,
    )


@dataclass
class LikelihoodEstimate:
    """A (differentiable) likelihood estimate of B completions.

    ``seq_logp`` is the per-sequence value a ratio uses: ``ratio = exp(new.seq_logp - old.seq_logp)``.
    ``token_logp`` holds per-token terms (0 where not scored); for the mask-based estimators
    ``seq_logp = token_logp.sum(-1)``: the terms are log-probs times the estimator's weights (1 for
    mean-field, 1/(t K) or 1/(#masked K) for the ELBO), so a per-token log-probability for a token-level
    ratio is ``extras["token_mean_logp"]`` (the mean log-prob over the samples that scored the token).
    AGRPO's ``token_logp`` are plain log-probs; its module documents the relation to ``seq_logp``.
    """

    token_logp: Tensor  # [B, L], carries grad
    token_mask: Tensor  # [B, L] bool: tokens this estimate scored
    seq_logp: Tensor  # [B], carries grad
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class MaskDraw:
    """One draw of a mask-based estimator, N = S * B rows, sample-major (row ``s * B + b``).

    ``weight[n, j]`` multiplies ``log p(completion_j | noisy row n)`` in the estimate (0 = not scored);
    the per-token estimate of row b is ``sum_s weight[s * B + b] * logp[s * B + b]``.
    """

    noisy_prompt: Tensor  # [N, P]
    noisy_completion: Tensor  # [N, L]
    weight: Tensor  # [N, L] float32
    scored: Tensor  # [N, L] bool: masked and counted tokens
    num_samples: int  # S rows per batch row (forward passes per sequence)


class LikelihoodEstimator(ABC):
    """Base class: see the module docstring. Subclasses set ``name``, ``couplings`` (supported) and
    ``default_coupling`` (used for ``coupling='auto'``), and implement ``draw`` and ``score``."""

    name: ClassVar[str]
    couplings: ClassVar[tuple[str, ...]] = ("independent", "shared")
    default_coupling: ClassVar[str] = "shared"

    def __init__(self, coupling: str = "auto", chunk_rows: int | None = None) -> None:
        coupling = self.default_coupling if coupling == "auto" else coupling
        if coupling not in self.couplings:
            raise ValueError(
                f"estimator {self.name!r} does not support coupling {coupling!r}; "
                f"choose one of {', '.join(self.couplings)} (or 'auto' = {self.default_coupling})"
            )
        if chunk_rows is not None and chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1 or None, got {chunk_rows}")
        self.coupling = coupling
        self.chunk_rows = chunk_rows

    @abstractmethod
    def draw(self, spec: ModelSpec, batch: EstimatorBatch, generator: torch.Generator) -> Any:
        """All randomness of one estimate, on the batch's device."""

    @abstractmethod
    def score(self, model: DiffusionModel, batch: EstimatorBatch, draw: Any) -> LikelihoodEstimate:
        """The estimate of ``model`` on ``draw``; differentiable when grad mode is on."""

    def check(self, model: DiffusionModel, batch: EstimatorBatch) -> None:
        batch.validate(model.spec.vocab_size)

    def estimate(self, model: DiffusionModel, batch: EstimatorBatch, generator: torch.Generator) -> LikelihoodEstimate:
        """One estimate with gradients to ``model``'s parameters."""
        self.check(model, batch)
        return self.score(model, batch, self.draw(model.spec, batch, generator))

    def estimate_models(
        self, models: Sequence[DiffusionModel], batch: EstimatorBatch, generator: torch.Generator
    ) -> list[LikelihoodEstimate]:
        """Estimates of several models (e.g. new, old, reference) under this estimator's coupling: the
        first carries gradients, the others are computed under ``torch.no_grad()``."""
        self.check(models[0], batch)
        spec = models[0].spec
        shared = None if self.coupling == "independent" else self.draw(spec, batch, generator)
        out = []
        for i, model in enumerate(models):
            draw = shared if shared is not None else self.draw(spec, batch, generator)
            with torch.set_grad_enabled(torch.is_grad_enabled() and i == 0):
                out.append(self.score(model, batch, draw))
        return out

    def estimate_pair(
        self, new_model: DiffusionModel, old_model: DiffusionModel, batch: EstimatorBatch,
        generator: torch.Generator,
    ) -> tuple[LikelihoodEstimate, LikelihoodEstimate]:
        """``(new, old)``: new with gradients, old under ``no_grad``, masks coupled per ``coupling``."""
        new, old = self.estimate_models([new_model, old_model], batch, generator)
        return new, old


# --------------------------------------------------------------------------- shared forward pass


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """``log softmax(logits)[target]`` in float32: ``[..., V], [...] -> [...]``."""
    logits = logits.float()
    picked = logits.gather(-1, targets[..., None]).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def score_rows(
    model: DiffusionModel,
    prompt_mask: Tensor,
    noisy_prompt: Tensor,
    noisy_completion: Tensor,
    targets: Tensor,
    select: Tensor,
    chunk_rows: int | None = None,
    to_logp: Callable[[Tensor, Tensor], Tensor] = token_logprobs,
) -> Tensor:
    """Log-probs of ``targets`` at the selected completion positions of N noisy rows.

    Only the selected positions go through the (float32 / float64) log-softmax, so its cost and memory
    scale with the scored tokens, not with N * L * V.

    Args:
        prompt_mask: ``[N, P]`` padding mask (1 = real) of the (left-padded) prompts.
        noisy_prompt / noisy_completion: ``[N, P]`` / ``[N, L]`` model input (mask id where masked).
        targets: ``[N, L]`` clean completion tokens.
        select: ``[N, L]`` bool, the positions to score.
        chunk_rows: most rows per forward pass (None: one pass).
        to_logp: ``(logits [n, V], targets [n]) -> [n]``.
    Returns:
        ``[N, L]`` float32 log-probs at the selected positions, 0 elsewhere.
    Raises:
        ValueError: when the model returns non-finite logits there (model output is untrusted).
    """
    device = model.device
    rows, plen = noisy_prompt.shape
    step = rows if chunk_rows is None else chunk_rows
    out = []
    for lo in range(0, rows, max(step, 1)):
        hi = min(rows, lo + step)
        pad = prompt_mask[lo:hi].to(device)
        x = torch.cat([noisy_prompt[lo:hi].to(device), noisy_completion[lo:hi].to(device)], dim=1)
        attn = torch.cat([pad, torch.ones_like(x[:, plen:])], dim=1)
        logits = model(x, attention_mask=attn, position_ids=positions_from_padding(attn))[:, plen:]
        where = select[lo:hi].to(device).nonzero(as_tuple=True)
        picked = logits[where]
        finite = torch.isfinite(picked).all(-1)
        if not bool(finite.all()):
            bad = sorted({int(r) + lo for r in where[0][~finite].tolist()})
            raise ValueError(
                f"model {model.spec.arch} returned non-finite logits on estimator rows {bad[:8]}; "
                "check the weights (a diverged update?) and the dtype"
            )
        values = to_logp(picked, targets[lo:hi].to(device)[where]).float()
        out.append(torch.zeros(hi - lo, logits.shape[1], device=device).index_put(where, values))
    return torch.cat(out, dim=0)


def score_mask_draw(
    model: DiffusionModel, batch: EstimatorBatch, draw: MaskDraw, chunk_rows: int | None
) -> tuple[Tensor, LikelihoodEstimate]:
    """Score a `MaskDraw`: returns the per-row log-probs ``[N, L]`` (at ``draw.scored``, 0
    elsewhere) and the estimate ``token_logp[b] = sum_s weight[s, b] * logp[s, b]``."""
    s = draw.num_samples
    bsz, glen = batch.completion_ids.shape
    device = model.device
    targets = batch.completion_ids.to(device).repeat(s, 1)
    scored = draw.scored.to(device)
    logp = score_rows(
        model, batch.prompt_mask.repeat(s, 1), draw.noisy_prompt, draw.noisy_completion, targets, scored, chunk_rows
    )
    token_logp = (draw.weight.to(device) * logp).view(s, bsz, glen).sum(0)
    times = scored.view(s, bsz, glen).sum(0)
    token_mean_logp = logp.view(s, bsz, glen).sum(0) / times.clamp_min(1)
    est = LikelihoodEstimate(
        token_logp=token_logp, token_mask=times > 0, seq_logp=token_logp.sum(-1),
        extras={"times_scored": times, "token_mean_logp": token_mean_logp,
                "num_passes": torch.full((bsz,), float(s), device=device)},
    )
    return logp, est


def uniform(shape: Sequence[int], generator: torch.Generator, device: torch.device) -> Tensor:
    """U[0, 1) float64 drawn on the generator's device, returned on ``device`` (the only way the
    estimators draw randomness)."""
    u = torch.rand(tuple(shape), generator=generator, device=generator.device, dtype=torch.float64)
    return u.to(device)


def mask_where(tokens: Tensor, masked: Tensor, mask_token_id: int) -> Tensor:
    return torch.where(masked, torch.full_like(tokens, mask_token_id), tokens)
