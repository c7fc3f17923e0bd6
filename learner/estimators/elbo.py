"""ELBO Monte Carlo estimator of log pi(o | q) for a masked diffusion model (ALGORITHMS.md section 2),
with independent, shared or complementary (coupled-GRPO / DiffuCoder) masks between new and old.

For each of K samples and each sequence: t ~ U(0, 1] (or stratified, t_k in ((k-1)/K, k/K]), every
scored completion token is masked independently with probability t, the prompt stays clean, and the
masked tokens are scored by one forward pass. The per-sample value is

- ``one_over_t``: (1/t) sum_{j masked} log p(o_j | x_t, q). Its expectation over t and the mask is
  the masked-diffusion ELBO, a lower bound on log pi(o | q) (LLaDA eq. 3 without the 1/L that only
  scales the training loss);
- ``mean``: the mean of log p(o_j | x_t, q) over the masked tokens: the length-normalised estimate
  the StableDRL code uses; it is not a bound.

The estimate is the average over the K samples (for ``mean``, over the samples that mask at least one
token: a sample that masks nothing has no mean; the sequence value is 0 only if every sample is empty). ``complementary`` scores each draw with its mask m and
with the complement (the scored tokens m leaves clean), weights 1/t and 1/(1 - t) (the complement is a
draw at noise level 1 - t), and averages the two halves: every scored token is scored exactly once per
pair, K pairs cost 2K forward passes, and the pairs are shared by the new and old estimates.

Unscored tokens (``completion_mask`` False) are masked in every sample and never scored.

Extras: ``times_scored [B, L]`` (samples that scored each token), ``token_mean_logp [B, L]`` (mean
log-prob of each token over those samples), ``num_passes [B]`` (forward passes
per sequence: K, or 2K for complementary pairs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from learner.estimators.base import (
    COUPLINGS,
    EstimatorBatch,
    LikelihoodEstimate,
    LikelihoodEstimator,
    MaskDraw,
    mask_where,
    score_mask_draw,
    uniform,
)
from system.models.base import DiffusionModel, ModelSpec

WEIGHTINGS = ("one_over_t", "mean")
T_SAMPLINGS = ("uniform", "stratified")


def noise_levels(num_samples: int, bsz: int, generator: torch.Generator, device: torch.device,
                 stratified: bool = False) -> Tensor:
    """Noise levels ``[K, B]`` float64 in (0, 1]: ``1 - U[0, 1)``, or stratified ``(k + 1 - u) / K``
    so sample k lies in ``(k / K, (k + 1) / K]`` (k = 0..K-1)."""
    u = uniform((num_samples, bsz), generator, device)
    if not stratified:
        return 1.0 - u
    k = torch.arange(num_samples, device=device, dtype=torch.float64)[:, None]
    return (k + 1.0 - u) / num_samples


def elbo_weights(masked: Tensor, prob: Tensor, weighting: str) -> Tensor:
    """Per-token weights ``[S, B, L]`` of S draws from their masks ``[S, B, L]`` and masking
    probabilities ``prob [S, B]``:

    - one_over_t: ``masked / prob / S`` (the average of the S unbiased bound estimates; a draw that
      masks nothing counts as 0, which keeps it unbiased);
    - mean: ``masked / #masked / S'`` with S' the draws of that row that mask at least one token: the
      average of the per-draw means over the draws that have one (an empty draw would otherwise count
      as log-prob 0, a large outlier of the ratio).
    """
    num = masked.shape[0]
    if weighting == "one_over_t":
        per_row = 1.0 / prob.clamp_min(1e-300) / num
    else:
        count = masked.sum(-1)
        nonempty = (count > 0).sum(0, keepdim=True).clamp_min(1)
        per_row = 1.0 / (count.clamp_min(1) * nonempty).double()
    return torch.where(masked, per_row[..., None], torch.zeros((), dtype=torch.float64, device=masked.device))


class ElboEstimator(LikelihoodEstimator):
    """See the module docstring. ``num_samples`` K (pairs for complementary)."""

    name = "elbo"
    couplings = COUPLINGS
    default_coupling = "independent"

    def __init__(self, num_samples: int = 2, weighting: str = "mean", t_sampling: str = "uniform",
                 coupling: str = "auto", chunk_rows: int | None = None) -> None:
        super().__init__(coupling, chunk_rows)
        if num_samples < 1:
            raise ValueError(f"elbo: num_samples must be >= 1, got {num_samples}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"elbo: weighting {weighting!r} unknown; choose one of {', '.join(WEIGHTINGS)}")
        if t_sampling not in T_SAMPLINGS:
            raise ValueError(f"elbo: t_sampling {t_sampling!r} unknown; choose one of {', '.join(T_SAMPLINGS)}")
        self.num_samples, self.weighting, self.t_sampling = num_samples, weighting, t_sampling

    def draw(self, spec: ModelSpec, batch: EstimatorBatch, generator: torch.Generator) -> MaskDraw:
        completion = batch.completion_ids
        k, (bsz, glen), device = self.num_samples, completion.shape, completion.device
        t = noise_levels(k, bsz, generator, device, self.t_sampling == "stratified")
        u = uniform((k, bsz, glen), generator, device)
        scored = batch.completion_mask.to(device)[None].expand(k, bsz, glen)
        masked = (u < t[..., None]) & scored
        prob = t
        if self.coupling == "complementary":
            masked = torch.cat([masked, ~masked & scored])
            prob = torch.cat([t, 1.0 - t])
        rows = masked.shape[0]
        weight = elbo_weights(masked, prob, self.weighting)
        unscored = ~batch.completion_mask.to(device)[None]
        noisy = mask_where(completion.repeat(rows, 1), (masked | unscored).reshape(rows * bsz, glen), spec.mask_token_id)
        return MaskDraw(
            noisy_prompt=batch.prompt_ids.repeat(rows, 1), noisy_completion=noisy,
            weight=weight.reshape(rows * bsz, glen).float(), scored=masked.reshape(rows * bsz, glen),
            num_samples=rows,
        )

    def score(self, model: DiffusionModel, batch: EstimatorBatch, draw: MaskDraw) -> LikelihoodEstimate:
        return score_mask_draw(model, batch, draw, self.chunk_rows)[1]
