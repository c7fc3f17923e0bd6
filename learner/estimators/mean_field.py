"""Mean-field one-step estimator (d1 / diffu-GRPO; ALGORITHMS.md section 2).

Every completion token is masked, each real prompt token is masked with probability ``p_mask`` (0.15),
and one forward pass gives per-token log p(o_j | masked prompt, fully masked completion). The
sequence value is the sum over the scored tokens (a mean-field pseudo-likelihood, not a bound); d1's
losses use the per-token terms. d1 shares the prompt mask between the new, old and reference
estimates of one inner step (``shared``, the default here) and draws a fresh one per inner step:
pass the same generator on, or call `estimate_models([new, old, ref], ...)` for all three at once.

Departure from d1's code: d1 seeds the global RNG (``set_seed``) to repeat the mask; here the draw is
made once from the explicit generator and reused.

Extras: ``times_scored [B, L]``, ``token_mean_logp [B, L]`` (= ``token_logp`` here), ``num_passes [B]`` (1).
"""

from __future__ import annotations

import torch

from learner.estimators.base import (
    EstimatorBatch,
    LikelihoodEstimate,
    LikelihoodEstimator,
    MaskDraw,
    mask_where,
    score_mask_draw,
    uniform,
)
from system.models.base import DiffusionModel, ModelSpec


class MeanFieldEstimator(LikelihoodEstimator):
    """See the module docstring."""

    name = "mean_field"
    couplings = ("independent", "shared")
    default_coupling = "shared"

    def __init__(self, p_mask: float = 0.15, coupling: str = "auto", chunk_rows: int | None = None) -> None:
        super().__init__(coupling, chunk_rows)
        if not 0.0 <= p_mask < 1.0:
            raise ValueError(f"mean_field: p_mask must be in [0, 1), got {p_mask}")
        self.p_mask = p_mask

    def draw(self, spec: ModelSpec, batch: EstimatorBatch, generator: torch.Generator) -> MaskDraw:
        prompt, completion = batch.prompt_ids, batch.completion_ids
        u = uniform(prompt.shape, generator, prompt.device)
        prompt_masked = batch.prompt_mask.bool() & (u < self.p_mask)
        scored = batch.completion_mask.bool()
        return MaskDraw(
            noisy_prompt=mask_where(prompt, prompt_masked, spec.mask_token_id),
            noisy_completion=torch.full_like(completion, spec.mask_token_id),
            weight=scored.float(), scored=scored, num_samples=1,
        )

    def score(self, model: DiffusionModel, batch: EstimatorBatch, draw: MaskDraw) -> LikelihoodEstimate:
        return score_mask_draw(model, batch, draw, self.chunk_rows)[1]
