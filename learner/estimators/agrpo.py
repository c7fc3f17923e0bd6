"""AGRPO per-step estimator from recorded trajectories (ALGORITHMS.md sections 1 and 2).

Generation is a Markov chain of denoising steps. With s_t the state before step t (rebuilt by
`system.diffusion.rebuild_state`: every token with ``unmask_step >= t`` masked) and R_t the scored
tokens revealed at step t, the per-step term and the trajectory log-likelihood are

    l_i(t) = sum_{j in R_t} log pi_theta(o_j | s_t, q),      F_i = sum_{t < m_i} l_i(t),

where m_i = (last step that revealed a non-EOS token) + 1 (at least 1): the later steps reveal only
EOS and are left out. F_i is estimated from k sampled steps per sequence, all k states of all
sequences scored in one batched forward pass:

- low-discrepancy sampling: with S = B * k, u = (randperm(S) + U(0, 1)) / S reshaped (B, k): every u
  is U(0, 1) and the batch covers [0, 1) evenly;
- ``uniform``: t = floor(u * m_i), weight w = 1;
- ``entropy``: q_i(t) proportional to (summed sampling entropy of the tokens revealed at t) + 1e-8,
  t by inverse CDF of q_i at u, weight w = (1 / m_i) / q_i(t), so E[w l_i(t)] = F_i / m_i still.

The estimate is  seq_logp_i = (m_i / k) sum_s w_s l_i(t_s)  (unbiased for F_i). Per token:
``token_logp`` is log pi_theta(o_j | s_{t_j}) on the tokens revealed at a sampled step
(``token_mask``), ``extras["step_weight"]`` the sum of the IS weights w_s of the samples that hit the
token's step (a step sampled twice counts twice), so seq_logp = (m / k) * sum_j step_weight *
token_logp, and the AGRPO loss is -(1 / (k G)) sum_i sum_j step_weight_ij * clip-surrogate_ij.

Log-probs use the sampling distribution of generation: top-k / top-p filtering of the logits
(`actors.decoding.reference.filter_logits`), then temperature (none at temperature 0), in float64, so
at theta = theta_old they equal the decoder's recorded ``logprobs`` (the cached old log-probs) and
the ratio is 1. A token outside the top-k / top-p set at train time has probability 0: its log-prob
is floored at ``LOGP_FLOOR`` (ratio 0, no NaN) and counted in ``extras["filtered_out"]``.

Caveat: the factorisation is exact only for ``random`` remasking. With ``low_confidence`` remasking the
set of positions revealed at each step is itself chosen by theta (through the confidences), and that
choice is not in the product, so F_i is the likelihood of the tokens given the recorded order only.
Classifier-free guidance is not supported (the decoder's guided distribution would need the
unconditional pass too).

Extras: ``step_weight [B, L]``, ``num_active_steps [B]`` (m_i), ``sampled_steps [B, k]``,
``num_passes [B]`` (k; cached old log-probs cost none), ``filtered_out [B]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from actors.decoding.reference import filter_logits
from learner.estimators.base import (
    EstimatorBatch,
    LikelihoodEstimate,
    LikelihoodEstimator,
    score_rows,
    uniform,
)
from system.diffusion import rebuild_state
from system.models.base import DiffusionModel, ModelSpec

LOGP_FLOOR = -1.0e4
SAMPLINGS = ("uniform", "entropy")
OLD_SOURCES = ("cached", "recompute")


@dataclass
class StepDraw:
    """Sampled steps of one AGRPO estimate (B sequences, k samples each)."""

    steps: Tensor  # [B, k] long
    weight: Tensor  # [B, k] float64 importance weights (1 / m) / q(t); 1 for uniform sampling
    num_active: Tensor  # [B] long, m_i
    u: Tensor  # [B, k] float64 low-discrepancy uniforms the steps came from


def active_steps(completion_ids: Tensor, unmask_step: Tensor, eos_token_id: int) -> Tensor:
    """m_i = 1 + the last step that revealed a non-EOS token (1 when every token is EOS). ``[B]``."""
    last = torch.where(completion_ids != eos_token_id, unmask_step, torch.full_like(unmask_step, -1))
    return (last.max(-1).values + 1).clamp_min(1)


def step_entropy(entropies: Tensor, unmask_step: Tensor, scored: Tensor, num_steps: int) -> Tensor:
    """Summed entropy of the scored tokens revealed at each step: ``[B, L] -> [B, num_steps]`` float64
    (``num_steps`` > every ``unmask_step``)."""
    ent = torch.where(scored, entropies.double(), torch.zeros((), dtype=torch.float64, device=entropies.device))
    out = torch.zeros(entropies.shape[0], num_steps, dtype=torch.float64, device=entropies.device)
    return out.scatter_add_(1, unmask_step, ent)


def low_discrepancy_uniforms(bsz: int, k: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``u = (randperm(S) + U(0, 1)) / S``, S = B * k, reshaped ``[B, k]`` float64."""
    total = bsz * k
    perm = torch.randperm(total, generator=generator, device=generator.device).to(device)
    return ((perm.double() + uniform((total,), generator, device)) / total).view(bsz, k)


def entropy_proposal(step_ent: Tensor, num_active: Tensor) -> Tensor:
    """q_i(t) = (H_i(t) + 1e-8) / sum_{t' < m_i} (H_i(t') + 1e-8) for t < m_i, else 0. ``[B, T]``."""
    steps = torch.arange(step_ent.shape[1], device=step_ent.device)
    mass = torch.where(steps[None] < num_active[:, None], step_ent + 1e-8, torch.zeros_like(step_ent))
    return mass / mass.sum(-1, keepdim=True)


def sample_steps(u: Tensor, num_active: Tensor, proposal: Tensor | None) -> tuple[Tensor, Tensor]:
    """Steps ``[B, k]`` and weights from uniforms ``u [B, k]``: uniform ``floor(u * m)`` (weight 1), or
    the inverse CDF of ``proposal [B, T]`` with weight ``(1 / m) / q(t)``."""
    m = num_active[:, None]
    if proposal is None:
        steps = torch.minimum((u * m).floor().long(), m - 1)
        return steps, torch.ones_like(u)
    cdf = proposal.cumsum(-1).contiguous()
    steps = torch.minimum(torch.searchsorted(cdf, u.contiguous(), right=True), m - 1)
    return steps, (1.0 / m.double()) / proposal.gather(1, steps)


class AgrpoEstimator(LikelihoodEstimator):
    """See the module docstring. ``temperature`` / ``top_k`` / ``top_p`` must be generation's."""

    name = "agrpo"
    couplings = ("shared",)
    default_coupling = "shared"

    def __init__(self, num_steps: int = 24, sampling: str = "uniform", temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, old_logprobs: str = "cached",
                 coupling: str = "auto", chunk_rows: int | None = None) -> None:
        super().__init__(coupling, chunk_rows)
        if num_steps < 1:
            raise ValueError(f"agrpo: num_steps must be >= 1, got {num_steps}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"agrpo: sampling {sampling!r} unknown; choose one of {', '.join(SAMPLINGS)}")
        if old_logprobs not in OLD_SOURCES:
            raise ValueError(f"agrpo: old_logprobs {old_logprobs!r} unknown; choose one of {', '.join(OLD_SOURCES)}")
        if temperature < 0:
            raise ValueError(f"agrpo: temperature must be >= 0 (generation's), got {temperature}")
        self.num_steps, self.sampling, self.old_source = num_steps, sampling, old_logprobs
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def check(self, model: DiffusionModel, batch: EstimatorBatch) -> None:
        super().check(model, batch)
        needed = [("unmask_step", True), ("entropies", self.sampling == "entropy"),
                  ("old_logprobs", self.old_source == "cached")]
        for name, need in needed:
            if need and getattr(batch, name) is None:
                raise ValueError(
                    f"agrpo: EstimatorBatch.{name} is None; take it from the decoder's trajectory "
                    "(learner.estimators.batch_from_decode)"
                    + (" or set algorithm.agrpo_old_logprobs=recompute" if name == "old_logprobs" else "")
                    + (" or set algorithm.agrpo_sampling=uniform" if name == "entropies" else "")
                )
        assert batch.unmask_step is not None
        if batch.unmask_step.dtype != torch.long or (batch.unmask_step.numel() and int(batch.unmask_step.min()) < 0):
            raise ValueError(
                "agrpo: EstimatorBatch.unmask_step must be int64 steps >= 0 (every completion token revealed); "
                f"got dtype {batch.unmask_step.dtype}, min {int(batch.unmask_step.min())}"
            )
        for name in ("entropies", "old_logprobs"):
            value = getattr(batch, name)
            if value is not None and bool(torch.isnan(value).any()):
                raise ValueError(f"agrpo: EstimatorBatch.{name} holds NaN; the rollout's trajectory is corrupt")

    def draw(self, spec: ModelSpec, batch: EstimatorBatch, generator: torch.Generator) -> StepDraw:
        assert batch.unmask_step is not None
        completion, unmask_step = batch.completion_ids, batch.unmask_step.to(batch.completion_ids.device)
        device = completion.device
        num_active = active_steps(completion, unmask_step, spec.eos_token_id)
        u = low_discrepancy_uniforms(completion.shape[0], self.num_steps, generator, device)
        proposal = None
        if self.sampling == "entropy":
            assert batch.entropies is not None
            num_steps = int(unmask_step.max()) + 1
            ent = step_entropy(batch.entropies.to(device), unmask_step, batch.completion_mask.to(device), num_steps)
            proposal = entropy_proposal(ent, num_active)
        steps, weight = sample_steps(u, num_active, proposal)
        return StepDraw(steps=steps, weight=weight, num_active=num_active, u=u)

    def sampling_logprobs(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Log-probs under generation's sampling distribution (filter, then temperature, float64)."""
        scaled = filter_logits(logits.float(), self.top_k, self.top_p).double()
        if self.temperature > 0:
            scaled = scaled / self.temperature
        logp = torch.log_softmax(scaled, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
        return logp.float()

    def score(self, model: DiffusionModel, batch: EstimatorBatch, draw: StepDraw) -> LikelihoodEstimate:
        assert batch.unmask_step is not None
        k, (bsz, glen), device = self.num_steps, batch.completion_ids.shape, model.device
        completion = batch.completion_ids.to(device).repeat_interleave(k, 0)  # row i * k + s
        unmask_step = batch.unmask_step.to(device).repeat_interleave(k, 0)
        steps = draw.steps.to(device).reshape(-1)
        state = rebuild_state(completion, unmask_step, steps, model.mask_token_id)
        hits = (unmask_step == steps[:, None]) & batch.completion_mask.to(device).repeat_interleave(k, 0)
        logp = score_rows(
            model, batch.prompt_mask.repeat_interleave(k, 0), batch.prompt_ids.repeat_interleave(k, 0), state,
            completion, hits, self.chunk_rows, to_logp=self.sampling_logprobs,
        )
        filtered_out = (hits & (logp < LOGP_FLOOR)).view(bsz, k, glen).sum((1, 2))
        logp = torch.where(hits, logp.clamp_min(LOGP_FLOOR), torch.zeros_like(logp)).view(bsz, k, glen)
        hits = hits.view(bsz, k, glen)
        count = hits.sum(1)
        token_logp = logp.sum(1) / count.clamp_min(1)  # a step sampled twice: its two equal scores, averaged
        step_weight = (hits * draw.weight.to(device)[..., None]).sum(1).float()
        return self._estimate(token_logp, count > 0, step_weight, draw, {"filtered_out": filtered_out})

    def _estimate(self, token_logp: Tensor, token_mask: Tensor, step_weight: Tensor, draw: StepDraw,
                  extras: dict[str, Tensor]) -> LikelihoodEstimate:
        scale = draw.num_active.to(token_logp.device).float() / self.num_steps
        seq_logp = scale * (step_weight * token_logp).sum(-1)
        extras = {**extras, "step_weight": step_weight, "num_active_steps": draw.num_active.float(),
                  "sampled_steps": draw.steps, "num_passes": torch.full_like(scale, float(self.num_steps))}
        return LikelihoodEstimate(token_logp=token_logp, token_mask=token_mask, seq_logp=seq_logp, extras=extras)

    def cached_old(self, batch: EstimatorBatch, new: LikelihoodEstimate, draw: StepDraw) -> LikelihoodEstimate:
        """The old estimate from the generation-time log-probs, on the tokens ``new`` scored."""
        assert batch.old_logprobs is not None
        old = batch.old_logprobs.to(new.token_logp.device).float().clamp_min(LOGP_FLOOR)
        token_logp = torch.where(new.token_mask, old, torch.zeros_like(old))
        return self._estimate(token_logp, new.token_mask, new.extras["step_weight"], draw,
                              {"filtered_out": torch.zeros_like(new.extras["filtered_out"])})

    def estimate_pair(
        self, new_model: DiffusionModel, old_model: DiffusionModel | None, batch: EstimatorBatch,
        generator: torch.Generator,
    ) -> tuple[LikelihoodEstimate, LikelihoodEstimate]:
        """``(new, old)`` on the same sampled steps; old from the cache (``old_model`` unused, may be
        None) or recomputed with ``old_model`` under ``no_grad``."""
        if self.old_source == "recompute":
            if old_model is None:
                raise ValueError("agrpo: old_logprobs='recompute' needs an old_model")
            new, old = self.estimate_models([new_model, old_model], batch, generator)
            return new, old
        self.check(new_model, batch)
        draw = self.draw(new_model.spec, batch, generator)
        new = self.score(new_model, batch, draw)
        return new, self.cached_old(batch, new, draw)
