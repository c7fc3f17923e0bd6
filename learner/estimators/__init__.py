"""Likelihood and ratio estimators for dLLM policies, chosen by name (ALGORITHMS.md section 2):

- ``mean_field``: d1's one-step estimate (completion fully masked, prompt masked with p = 0.15);
- ``elbo``: Monte Carlo ELBO, K samples, 1/t-weighted or per-token mean, independent / shared /
  complementary masks between the new and old policy;
- ``spg``: SPG block-random masking, with the EUBO surrogate for negative advantages in ``extras``;
- ``agrpo``: per-step likelihoods of recorded trajectories at k sampled steps (uniform or entropy
  importance sampling), old log-probs from generation time;
- ``staircase_elbo``: block-diffusion models: every block scored at its own noise level in one pass of
  the staircase layout;
- ``uniform_elbo``: uniform-noise block diffusion (DiffusionGemma): the uniform kernel's continuous-time
  ELBO, every block in one staircase pass (docs/uniform_diffusion.md).

Each takes an explicit ``torch.Generator`` and never touches the global RNG. See `base` for the
contract (`EstimatorBatch` in, `LikelihoodEstimate` out).
"""

from __future__ import annotations

import inspect
from typing import Any

from learner.estimators.agrpo import AgrpoEstimator
from learner.estimators.base import (
    COUPLINGS,
    EstimatorBatch,
    LikelihoodEstimate,
    LikelihoodEstimator,
    batch_from_decode,
)
from learner.estimators.elbo import ElboEstimator
from learner.estimators.mean_field import MeanFieldEstimator
from learner.estimators.spg import SpgEstimator
from learner.estimators.staircase import StaircaseElboEstimator
from learner.estimators.uniform import UniformElboEstimator
from system.config import AlgorithmConfig, DecodingConfig

ESTIMATORS: dict[str, type[LikelihoodEstimator]] = {
    cls.name: cls
    for cls in (MeanFieldEstimator, ElboEstimator, SpgEstimator, AgrpoEstimator, StaircaseElboEstimator,
                UniformElboEstimator)
}


def get_estimator(name: str, **options: Any) -> LikelihoodEstimator:
    """The estimator registered as ``name``, built with ``options`` (its constructor's keywords)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; available: {', '.join(sorted(ESTIMATORS))}")
    cls = ESTIMATORS[name]
    try:
        return cls(**options)
    except TypeError as e:
        allowed = list(inspect.signature(cls.__init__).parameters)[1:]
        raise ValueError(f"estimator {name!r}: {e}; its options are {', '.join(allowed)}") from None


def estimator_from_config(algorithm: AlgorithmConfig, decoding: DecodingConfig) -> LikelihoodEstimator:
    """The configured estimator. AGRPO takes temperature / top-k / top-p from ``decoding`` so its
    log-probs use generation's sampling distribution."""
    common = {"coupling": algorithm.coupling, "chunk_rows": algorithm.estimator_chunk_rows}
    name = algorithm.estimator
    if name == "mean_field":
        return get_estimator(name, p_mask=algorithm.prompt_mask_prob, **common)
    if name == "elbo":
        return get_estimator(name, num_samples=algorithm.num_mc_samples, weighting=algorithm.elbo_weighting,
                             t_sampling=algorithm.t_sampling, **common)
    if name == "spg":
        return get_estimator(name, num_samples=algorithm.num_mc_samples, block_size=algorithm.spg_block_size,
                             clean_mask_prob=algorithm.spg_clean_mask_prob, beta=algorithm.eubo_beta,
                             mix_weight=algorithm.spg_mix_weight, **common)
    if name == "staircase_elbo":
        return get_estimator(name, num_samples=algorithm.num_mc_samples, weighting=algorithm.elbo_weighting,
                             t_sampling=algorithm.t_sampling, layout=algorithm.staircase_layout, **common)
    if name == "uniform_elbo":
        return get_estimator(name, num_samples=algorithm.num_mc_samples, **common)
    if decoding.cfg_scale > 0:
        raise ValueError(
            f"estimator 'agrpo' cannot score guided generation (decoding.cfg_scale = {decoding.cfg_scale}); "
            "set decoding.cfg_scale=0 or use another estimator"
        )
    return get_estimator(name, num_steps=algorithm.agrpo_num_steps, sampling=algorithm.agrpo_sampling,
                         temperature=decoding.temperature, top_k=decoding.top_k, top_p=decoding.top_p,
                         old_logprobs=algorithm.agrpo_old_logprobs, **common)


__all__ = [
    "COUPLINGS",
    "ESTIMATORS",
    "AgrpoEstimator",
    "ElboEstimator",
    "EstimatorBatch",
    "LikelihoodEstimate",
    "LikelihoodEstimator",
    "MeanFieldEstimator",
    "SpgEstimator",
    "StaircaseElboEstimator",
    "UniformElboEstimator",
    "batch_from_decode",
    "estimator_from_config",
    "get_estimator",
]
