"""Uniform-noise block ELBO (``uniform_elbo``): the likelihood estimate of a uniform-state
block-diffusion policy (DiffusionGemma), every block scored in one staircase pass. The derivation is
docs/uniform_diffusion.md; in short:

The forward kernel corrupts each token independently: at noise level t in [0, 1] a token is replaced
by a uniform draw from the V-token vocabulary with probability t (``alpha_t = 1 - t``). As a
continuous-time Markov chain it jumps to each other token at rate ``beta_t / V``, ``beta_t = 1/(1-t)``.
A denoiser p(x_i | z) defines the reverse rates (Campbell et al. 2022; the "x-prediction"
parametrisation of UDLM, Schiff et al. 2025), and the path-measure bound gives, per block,

    log p(x_b | context) >= - int_0^1 (beta_t / V) E_{z ~ q_t(.|x_b)} sum_i K_i(z, t) dt

with ``K_i`` the generalised KL between the true and the model reverse rates out of z_i, in closed form
in :func:`uniform_kl_terms` (O(V) per position, like a log-softmax). The bound is tight when p is the
exact posterior (tests/learner/test_estimators_uniform.py checks it to 1e-9 on an enumerable toy).

Monte Carlo: each (sample, row, block) draws its own t in [T_LO, T_HI], log-uniformly by default (an
importance sampler; stratified over the K samples on request), corrupts the block, and one pass over ``[prompt | clean completion]`` (encoder, into a
cache that keeps every token) plus all noisy blocks at once (decoder, with the staircase mask:
block b sees the prompt, the clean blocks < b, the sliding layers only the last W-1 of them, and its
own noisy block) scores every block. Per token, ``-w(t) beta_t / V * K_i`` with w the importance weight
1/density(t); summed over the scored tokens of a row it is an unbiased estimate of the ELBO truncated
to [T_LO, T_HI]. The truncation is part of the definition: DiffusionGemma's denoiser does not see t,
so p(x_i = z_i | z) < 1 as t -> 0 and the untruncated integral diverges like (1 - p) ln(1 / T_LO).

Options: ``weighting: flat_ce`` is the published SFT objective's per-token term log p(x_i | z) (no
weight: not a bound, a surrogate); ``self_conditioning: off`` scores p(x | z) with a zero
self-conditioning input (the first decoder step of every canvas), ``two_pass`` feeds a first
no-grad pass's raw logits back as self-conditioning (the denoiser of later steps); both are functions
of z alone, so both give valid bounds, of two different denoisers. Unscored tokens (pads after EOS)
are corrupted like the rest but add no term. Temperature is 1: the likelihood is the model's, not the
tempered sampler's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from learner.estimators.base import EstimatorBatch, LikelihoodEstimate, LikelihoodEstimator, uniform
from system.models.base import DiffusionModel, ModelSpec
from system.models.diffusion_gemma import DiffusionGemmaAdapter

T_LO, T_HI = 1e-4, 1.0 - 1e-6
WEIGHTINGS = ("elbo", "flat_ce")
SELF_CONDITIONING = ("off", "two_pass")
T_SAMPLINGS = ("log_uniform", "log_stratified", "uniform", "stratified")


def noise_levels(u: Tensor, t_sampling: str) -> tuple[Tensor, Tensor]:
    """``u`` in [0, 1) -> noise levels t in [T_LO, T_HI] and the importance weights 1 / density(t), so that
    ``E[weight * f(t)] = int_{T_LO}^{T_HI} f(t) dt``. ``log_*`` draws log t uniformly (density
    1 / (t ln(T_HI / T_LO))): it cancels the 1/t growth of the integrand near t = 0
    (docs/uniform_diffusion.md section 3); ``uniform`` draws t itself."""
    if t_sampling.startswith("log"):
        span = torch.log(torch.tensor(T_HI / T_LO, dtype=torch.float64, device=u.device))
        t = T_LO * torch.exp(u * span)
        return t, t * span
    return T_LO + (T_HI - T_LO) * u, torch.full_like(u, T_HI - T_LO)


def uniform_kl_terms(logp: Tensor, noisy: Tensor, clean: Tensor, t: Tensor) -> Tensor:
    """``K_i``: the generalised KL sum_{y != z} [rh(y) - r(y) + r(y) log(r(y) / rh(y))] between the true
    reverse-rate ratios r and the model's rh out of the noisy token z (docs/uniform_diffusion.md, eq. 4).

    With a = 1 - t, c = t / V, pi = p(z): rh(y) = 1 - pi a / (a + c) + p(y) a / c; r(y) = c / (a + c)
    for every y when z = x, else r(x) = (a + c) / c and r(y) = 1.

    Args:
        logp: ``[..., V]`` log p(x_i = y | z) of the denoiser.
        noisy / clean: ``[...]`` token ids z_i and x_i.
        t: ``[...]`` noise levels in (0, 1), float64.
    Returns:
        ``[...]`` in logp's dtype (float32 at least).
    """
    vocab = logp.shape[-1]
    dtype = torch.promote_types(logp.dtype, torch.float32)
    logp = logp.to(dtype)
    a, c = 1.0 - t, t / vocab
    ratio = (a / c).to(dtype)  # a / c
    r_same = (c / (a + c)).to(dtype)  # r(y) when z = x
    pi = logp.gather(-1, noisy[..., None]).squeeze(-1).exp()
    base = 1.0 - pi * (1.0 - r_same)  # 1 - pi a / (a + c)
    log_rh = torch.logaddexp(base.log()[..., None], logp + ratio.log()[..., None])
    sum_log_rh = log_rh.sum(-1) - log_rh.gather(-1, noisy[..., None]).squeeze(-1)
    log_rh_x = log_rh.gather(-1, clean[..., None]).squeeze(-1)
    same = noisy == clean
    sum_rh = (vocab - 1) * base + (1.0 - pi) * ratio
    sum_r = torch.where(same, (vocab - 1) * r_same, 1.0 / r_same + (vocab - 2))
    r_log_r = torch.where(same, (vocab - 1) * r_same * r_same.log(), -r_same.log() / r_same)
    r_log_rh = torch.where(same, r_same * sum_log_rh, sum_log_rh + ratio * log_rh_x)
    return sum_rh - sum_r + r_log_r - r_log_rh


def elbo_rate(t: Tensor, vocab: int) -> Tensor:
    """``beta_t / V = 1 / ((1 - t) V)``: the weight of K in the ELBO integrand."""
    return 1.0 / ((1.0 - t) * vocab)


def staircase_masks(prompt_mask: Tensor, length: int, canvas: int, window: int) -> dict[str, Tensor]:
    """The decoder's mask dict ``[N, 1, L, P + L + L]`` bool over ``[cache: prompt | clean | noisy]``.

    Query j of block b = j // canvas attends real prompt keys and clean keys before the block start
    s_b = P + b * canvas (sliding layers: only keys >= s_b - (window - 1), the tokens a config-built
    cache keeps), and every noisy key of its own block."""
    rows, plen = prompt_mask.shape
    device = prompt_mask.device
    q_start = plen + (torch.arange(length, device=device) // canvas) * canvas  # [L]
    keys = torch.arange(plen + length, device=device)
    real = torch.cat([prompt_mask.bool(), torch.ones(rows, length, dtype=torch.bool, device=device)], dim=1)
    context = (keys[None, :] < q_start[:, None])[None] & real[:, None, :]  # [N, L, P+L]
    block = torch.arange(length, device=device) // canvas
    own = (block[None, :] == block[:, None])[None].expand(rows, -1, -1)
    near = keys[None, :] >= (q_start[:, None] - (window - 1))
    full = torch.cat([context, own], dim=-1)[:, None]
    sliding = torch.cat([context & near[None], own], dim=-1)[:, None]
    return {"full_attention": full, "sliding_attention": sliding}


def staircase_logits(model: DiffusionGemmaAdapter, prompt_ids: Tensor, prompt_mask: Tensor, clean: Tensor,
                     noisy: Tensor, self_conditioning: str = "off") -> Tensor:
    """Raw logits ``[N, L, V]`` of every noisy block given its clean context, in one encoder and one (or
    two, with ``two_pass`` self-conditioning) decoder passes. Positions count pads, as ``generate``."""
    plen, length = prompt_ids.shape[1], clean.shape[1]
    device = model.device
    cache = model.new_cache(keep_all=True)
    context = torch.cat([prompt_ids, clean], dim=1)
    key_mask = torch.cat([prompt_mask.bool(), torch.ones_like(clean, dtype=torch.bool)], dim=1)
    cache = model.encode(context, key_mask, cache, torch.arange(plen + length, device=device)[None])
    masks = staircase_masks(prompt_mask, length, model.canvas_length, int(model.spec.extra["sliding_window"]))
    pos = torch.arange(plen, plen + length, device=device)[None]
    self_cond = None
    if self_conditioning == "two_pass":
        with torch.no_grad():
            self_cond = model.denoise(noisy, cache, pos, masks).to(model.dtype)
    return model.denoise(noisy, cache, pos, masks, self_cond)


@dataclass
class UniformDraw:
    """One draw, N = S * B rows, sample-major (row ``s * B + b``)."""

    noisy: Tensor  # [N, L] every block corrupted at its own level
    t: Tensor  # [N, L] float64 noise level of each token's block
    weight: Tensor  # [N, L] float64 importance weight 1 / density(t) of that level
    num_samples: int


class UniformElboEstimator(LikelihoodEstimator):
    """See the module docstring."""

    name = "uniform_elbo"

    def __init__(self, num_samples: int = 1, weighting: str = "elbo", self_conditioning: str = "off",
                 t_sampling: str = "log_uniform", coupling: str = "auto", chunk_rows: int | None = None) -> None:
        super().__init__(coupling, chunk_rows)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        for field, value, allowed in (("weighting", weighting, WEIGHTINGS),
                                      ("self_conditioning", self_conditioning, SELF_CONDITIONING),
                                      ("t_sampling", t_sampling, T_SAMPLINGS)):
            if value not in allowed:
                raise ValueError(f"uniform_elbo: {field} {value!r} is not one of {', '.join(allowed)}")
        self.num_samples, self.weighting = num_samples, weighting
        self.self_conditioning, self.t_sampling = self_conditioning, t_sampling

    def check(self, model: DiffusionModel, batch: EstimatorBatch) -> None:
        super().check(model, batch)
        if not isinstance(model, DiffusionGemmaAdapter):
            raise ValueError(f"estimator 'uniform_elbo' needs a uniform-noise model (diffusion_gemma); model "
                             f"{model.spec.arch!r} is masked: use 'staircase_elbo' or 'elbo'")
        length = batch.completion_ids.shape[1]
        if length % model.canvas_length:
            raise ValueError(f"uniform_elbo: completion length {length} is not a multiple of the canvas length "
                             f"{model.canvas_length}; set decoding.gen_length to a multiple of it")

    def draw(self, spec: ModelSpec, batch: EstimatorBatch, generator: torch.Generator) -> UniformDraw:
        assert spec.block_size is not None
        s, (bsz, length) = self.num_samples, batch.completion_ids.shape
        device = batch.completion_ids.device
        u = uniform((s, bsz, length // spec.block_size), generator, device)
        if self.t_sampling.endswith("stratified"):
            u = (torch.arange(s, device=device, dtype=torch.float64)[:, None, None] + u) / s
        t, weight = (v.repeat_interleave(spec.block_size, dim=-1).reshape(s * bsz, length)
                     for v in noise_levels(u, self.t_sampling))
        corrupt = uniform((s * bsz, length), generator, device) < t
        random = (uniform((s * bsz, length), generator, device) * spec.vocab_size).long()
        noisy = torch.where(corrupt, random.clamp_max(spec.vocab_size - 1), batch.completion_ids.repeat(s, 1))
        return UniformDraw(noisy=noisy, t=t, weight=weight, num_samples=s)

    def sample_terms(self, model: DiffusionGemmaAdapter, batch: EstimatorBatch, draw: UniformDraw) -> Tensor:
        """Per-row per-token terms ``[N, L]`` (0 where not scored): the ELBO integrand estimate or log p."""
        device, s = model.device, draw.num_samples
        rows = draw.noisy.shape[0]
        step = rows if self.chunk_rows is None else self.chunk_rows
        out = []
        for lo in range(0, rows, step):
            idx = torch.arange(lo, min(rows, lo + step), device=device) % batch.completion_ids.shape[0]
            clean = batch.completion_ids.to(device)[idx]
            noisy, t = draw.noisy[lo:lo + step].to(device), draw.t[lo:lo + step].to(device)
            weight = draw.weight[lo:lo + step].to(device)
            logits = staircase_logits(model, batch.prompt_ids.to(device)[idx], batch.prompt_mask.to(device)[idx],
                                      clean, noisy, self.self_conditioning)
            if not bool(torch.isfinite(logits).all()):
                raise ValueError(f"model {model.spec.arch} returned non-finite logits on uniform_elbo rows "
                                 f"{lo}..{lo + step}; check the weights (a diverged update?) and the dtype")
            logp = torch.log_softmax(logits.float(), dim=-1)
            if self.weighting == "flat_ce":
                term = logp.gather(-1, clean[..., None]).squeeze(-1)
            else:
                kl = uniform_kl_terms(logp, noisy, clean, t)
                term = -(weight * elbo_rate(t, logp.shape[-1])).to(kl.dtype) * kl
            out.append(term * batch.completion_mask.to(device)[idx])
        assert s * batch.completion_ids.shape[0] == rows
        return torch.cat(out, dim=0)

    def score(self, model: DiffusionModel, batch: EstimatorBatch, draw: UniformDraw) -> LikelihoodEstimate:
        assert isinstance(model, DiffusionGemmaAdapter)
        bsz, length = batch.completion_ids.shape
        terms = self.sample_terms(model, batch, draw).view(draw.num_samples, bsz, length)
        token_logp = terms.mean(0)
        passes = draw.num_samples * (2 if self.self_conditioning == "two_pass" else 1)
        mask = batch.completion_mask.to(model.device)
        return LikelihoodEstimate(
            token_logp=token_logp, token_mask=mask, seq_logp=token_logp.sum(-1),
            extras={"sample_seq_logp": terms.sum(-1), "token_mean_logp": token_logp,
                    "num_passes": torch.full((bsz,), float(passes), device=model.device)},
        )
