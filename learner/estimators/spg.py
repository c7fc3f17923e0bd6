"""SPG block-random masking estimator, with the EUBO surrogate for negative advantages (SPG, Wang et al.
2025; the proxy the StableDRL code uses; ALGORITHMS.md section 2).

What is implemented, per sequence and per sample k = 1..K (K = 2 by default), with the completion
cut into blocks of ``block_size`` tokens (the last one may be shorter):

1. pick a block b uniformly among the blocks that hold at least one scored token;
2. blocks after b are fully masked; inside b, n ~ U{1..n_b} of its n_b scored tokens are masked,
   chosen uniformly without replacement (its other tokens stay clean);
3. every real prompt token and every scored token of the blocks before b is masked with probability
   ``clean_mask_prob`` (0.15); unscored tokens (``completion_mask`` False) are always masked;
4. the sample's scored set M_k is every masked scored token (block b, the later blocks and the
   randomly masked earlier tokens, as in the SPG code), and

   ELBO_k = mean_{j in M_k} log p(o_j | x_k),      ELBO = (1/K) sum_k ELBO_k   (= ``seq_logp``).

The EUBO estimate (SPG's Renyi upper bound with ``beta``, 1.5), with t_k = |M_k| / #scored tokens:

   EUBO_j = (1/beta) log( (1/K) sum_k 1[j in M_k] p(o_j | x_k)^beta / t_k ),
   EUBO   = mean of EUBO_j over the tokens masked in at least one sample,

computed in log space (logsumexp). ``extras["eubo"]`` holds it and ``extras["negative_surrogate"]`` the
SPG mix ``w * EUBO + (1 - w) * ELBO`` (w = 0.5): the differentiable surrogate for A <= 0, while A > 0
uses the ELBO and the importance weight always uses the ELBO.

Departures from the SPG code: blocks are drawn independently per sample (the code takes the first K of
a permutation of the blocks, modulo the number of non-padding blocks); ``completion_mask`` may be any
mask, not only a prefix; the randomness comes from a generator, not a global seed.

Extras: ``eubo [B]``, ``negative_surrogate [B]`` (both differentiable), ``times_scored [B, L]``,
``token_mean_logp [B, L]``, ``num_passes [B]`` (K).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

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


def pick_block(has_scored: Tensor, u: Tensor) -> Tensor:
    """Uniform choice among the True entries of ``has_scored [..., nb]`` from ``u [...]`` in [0, 1);
    0 where a row has none. Returns the block index ``[...]`` long."""
    count = has_scored.sum(-1)
    r = torch.minimum((u * count).floor().long(), (count - 1).clamp_min(0))
    hit = (has_scored.long().cumsum(-1) == (r + 1)[..., None]) & has_scored
    return hit.long().argmax(-1)


def block_random_masks(
    scored: Tensor, block_size: int, u_block: Tensor, u_count: Tensor, u_pos: Tensor, u_clean: Tensor,
    clean_mask_prob: float,
) -> tuple[Tensor, Tensor]:
    """Steps 1-3 of the module docstring, vectorised over any leading shape.

    Args:
        scored: ``[..., L]`` bool, the tokens that count.
        u_block / u_count: ``[...]`` uniforms choosing the block and the count n.
        u_pos / u_clean: ``[..., L]`` uniforms choosing the positions in b / the masked clean tokens.
    Returns:
        ``(input_masked [..., L], scored_set [..., L])`` bool: tokens replaced by the mask token, and
        the scored set M (masked and scored).
    """
    glen = scored.shape[-1]
    block_id = torch.arange(glen, device=scored.device) // block_size
    num_blocks = -(-glen // block_size)
    onehot = block_id[:, None] == torch.arange(num_blocks, device=scored.device)[None, :]
    has_scored = (scored[..., :, None] & onehot).any(-2)
    b = pick_block(has_scored, u_block)[..., None]
    candidates = (block_id == b) & scored
    n_b = candidates.sum(-1, keepdim=True)
    n = torch.minimum((u_count[..., None] * n_b).floor().long() + 1, n_b)
    keys = torch.where(candidates, u_pos, torch.full_like(u_pos, 2.0))
    rank = keys.argsort(-1).argsort(-1)
    chosen = candidates & (rank < n)
    clean_masked = (block_id < b) & scored & (u_clean < clean_mask_prob)
    input_masked = (block_id > b) | ~scored | chosen | clean_masked
    return input_masked, input_masked & scored


def eubo(logp: Tensor, scored_set: Tensor, num_scored: Tensor, beta: float) -> Tensor:
    """SPG's EUBO estimate (module docstring) from K samples.

    Args:
        logp: ``[K, B, L]`` log p(o_j | x_k) (any value where not in the set).
        scored_set: ``[K, B, L]`` bool, M_k.
        num_scored: ``[B]`` scored tokens per sequence.
    Returns:
        ``[B]``; 0 for a sequence with no masked token.
    """
    k = logp.shape[0]
    t_hat = scored_set.sum(-1).double() / num_scored.double().clamp_min(1)  # [K, B]
    terms = beta * logp.double() - t_hat.clamp_min(1e-300).log()[..., None]
    any_k = scored_set.any(0)
    # -inf drops a sample from the sum; a token in no set gets finite fillers (its result is discarded),
    # so that logsumexp's backward never sees an all -inf column (0 * nan would poison the gradient).
    filler = torch.where(any_k, float("-inf"), 0.0).to(terms.dtype).expand_as(terms)
    terms = torch.where(scored_set, terms, filler)
    lse = torch.logsumexp(terms, dim=0)
    per_token = torch.where(any_k, (lse - math.log(k)) / beta, torch.zeros_like(lse))
    return (per_token.sum(-1) / any_k.sum(-1).clamp_min(1)).float()


class SpgEstimator(LikelihoodEstimator):
    """See the module docstring."""

    name = "spg"
    couplings = ("independent", "shared")
    default_coupling = "independent"

    def __init__(self, num_samples: int = 2, block_size: int = 32, clean_mask_prob: float = 0.15,
                 beta: float = 1.5, mix_weight: float = 0.5, coupling: str = "auto",
                 chunk_rows: int | None = None) -> None:
        super().__init__(coupling, chunk_rows)
        checks = [(num_samples >= 1, "num_samples", num_samples, ">= 1"), (block_size >= 1, "block_size", block_size, ">= 1"),
                  (0.0 <= clean_mask_prob < 1.0, "clean_mask_prob", clean_mask_prob, "in [0, 1)"),
                  (beta > 0, "beta", beta, "> 0"), (0.0 <= mix_weight <= 1.0, "mix_weight", mix_weight, "in [0, 1]")]
        for ok, name, value, rule in checks:
            if not ok:
                raise ValueError(f"spg: {name} must be {rule}, got {value}")
        self.num_samples, self.block_size, self.clean_mask_prob = num_samples, block_size, clean_mask_prob
        self.beta, self.mix_weight = beta, mix_weight

    def draw(self, spec: ModelSpec, batch: EstimatorBatch, generator: torch.Generator) -> MaskDraw:
        completion, prompt = batch.completion_ids, batch.prompt_ids
        k, (bsz, glen), device = self.num_samples, completion.shape, completion.device
        u_block, u_count = uniform((k, bsz), generator, device), uniform((k, bsz), generator, device)
        u_pos, u_clean = uniform((k, bsz, glen), generator, device), uniform((k, bsz, glen), generator, device)
        u_prompt = uniform((k, *prompt.shape), generator, device)
        scored = batch.completion_mask.to(device)[None].expand(k, bsz, glen)
        input_masked, scored_set = block_random_masks(
            scored, self.block_size, u_block, u_count, u_pos, u_clean, self.clean_mask_prob
        )
        prompt_masked = batch.prompt_mask.bool()[None] & (u_prompt < self.clean_mask_prob)
        weight = scored_set.double() / scored_set.sum(-1, keepdim=True).clamp_min(1) / k
        return MaskDraw(
            noisy_prompt=mask_where(prompt.repeat(k, 1), prompt_masked.reshape(k * bsz, -1), spec.mask_token_id),
            noisy_completion=mask_where(completion.repeat(k, 1), input_masked.reshape(k * bsz, glen), spec.mask_token_id),
            weight=weight.reshape(k * bsz, glen).float(), scored=scored_set.reshape(k * bsz, glen), num_samples=k,
        )

    def score(self, model: DiffusionModel, batch: EstimatorBatch, draw: MaskDraw) -> LikelihoodEstimate:
        logp, est = score_mask_draw(model, batch, draw, self.chunk_rows)
        k, (bsz, glen) = draw.num_samples, batch.completion_ids.shape
        num_scored = batch.completion_mask.to(logp.device).sum(-1)
        upper = eubo(logp.view(k, bsz, glen), draw.scored.to(logp.device).view(k, bsz, glen), num_scored, self.beta)
        est.extras["eubo"] = upper
        est.extras["negative_surrogate"] = self.mix_weight * upper + (1.0 - self.mix_weight) * est.seq_logp
        return est
