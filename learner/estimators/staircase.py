"""Staircase block ELBO: the likelihood estimate of a block-diffusion policy (SDAR, TraDo, LLaDA2.0, the
tiny model with ``attention: block``), every block scored in one forward pass of the staircase layout
(`system.staircase`; ALGORITHMS.md sections 2 and 4).

A block model factorises exactly across blocks, log pi(o | q) = sum_b log p(o_b | o_<b, q), and each
factor is a masked-diffusion likelihood over one block. For each of K samples and each sequence every
block b draws its own noise level t_b ~ U(0, 1] (or stratified over the K samples), each scored token of
block b is masked with probability t_b, and one pass over ``[prompt | clean o | noisy o]`` gives
log p(o_j | noisy block b, clean blocks < b, q) for every masked j of every block. Per sample:

- ``one_over_t``: sum_b (1/t_b) sum_{j in b masked} log p(o_j | ...): an unbiased estimate of the sum of
  the per-block ELBOs, a lower bound on log pi(o | q);
- ``mean``: the mean log-prob over all masked tokens of the sequence (length-normalised, as the ELBO
  estimator's ``mean``; samples that mask nothing are left out of the average).

The estimate is the average over the K samples. ``layout: per_block`` computes the same values with a
loop of separate block-causal passes over ``[prompt | clean blocks < b | noisy block b]`` (one per block:
slower, for checking and benchmarking the one-pass layout).

Choices a reviewer should know (the papers' training code differs in places): the prompt is never
masked; prompts are left-padded to a multiple of the block size before scoring, as the decoder pads
them, so the prompt's block partition is the one generation used; unscored tokens (``completion_mask``
False) are masked in both copies, so neither their block nor later blocks see them. Draw and score are
split as in `base`: ``shared`` coupling scores new and old on one draw (ratio exactly 1 at
theta = theta_old), ``independent`` on separate draws.

Extras: ``times_scored [B, L]``, ``token_mean_logp [B, L]`` (as the ELBO estimator's) and
``num_passes [B]`` (forward passes per sequence: K, or K times the blocks for ``per_block``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from learner.estimators.base import (
    EstimatorBatch,
    LikelihoodEstimate,
    LikelihoodEstimator,
    mask_where,
    token_logprobs,
    uniform,
)
from learner.estimators.elbo import T_SAMPLINGS, WEIGHTINGS, noise_levels
from system.diffusion import positions_from_padding
from system.models.base import DiffusionModel, ModelSpec
from system.staircase import staircase_logits

LAYOUTS = ("one_pass", "per_block")


@dataclass
class StaircaseDraw:
    """One draw, N = S * B rows, sample-major (row ``s * B + b``); L completion tokens in blocks of
    ``block_size``. ``weight[n, j]`` multiplies ``log p(completion_j | row n)`` (0 = not scored)."""

    clean: Tensor  # [N, L] completion, unscored tokens masked: the context of later blocks
    noisy: Tensor  # [N, L] every block masked at its own level (unscored tokens always)
    weight: Tensor  # [N, L] float32
    scored: Tensor  # [N, L] bool: masked and counted tokens
    t: Tensor  # [S, B, L / block_size] float64 noise level of every block
    num_samples: int
    block_size: int


def block_size_of(spec: ModelSpec, length: int, needed_by: str = "estimator 'staircase_elbo'",
                  instead: str = "use estimator 'elbo'") -> int:
    """The block size of a staircase pass, checked against the model and the completion length; errors
    name ``needed_by`` and suggest ``instead`` for a model without block attention."""
    if spec.attention != "block" or spec.block_size is None:
        raise ValueError(
            f"{needed_by} needs a block-diffusion model; model {spec.arch!r} has {spec.attention} attention: "
            f"{instead}, or use a block model (model.tiny.attention: block, or an SDAR / LLaDA2 checkpoint)"
        )
    if length % spec.block_size:
        raise ValueError(
            f"{needed_by}: completion length {length} is not a multiple of the model's block size "
            f"{spec.block_size}; set decoding.gen_length to a multiple of {spec.block_size}"
        )
    return spec.block_size


def align_prompt(prompt_ids: Tensor, prompt_mask: Tensor, block_size: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad ``[B, P]`` prompts to a width that is a multiple of ``block_size`` (as the decoder pads
    them): the block partition of the real prompt tokens then equals generation's."""
    extra = -prompt_ids.shape[1] % block_size
    if not extra:
        return prompt_ids, prompt_mask
    bsz = prompt_ids.shape[0]
    pad_ids = torch.full((bsz, extra), pad_id, dtype=prompt_ids.dtype, device=prompt_ids.device)
    pads = torch.zeros((bsz, extra), dtype=prompt_mask.dtype, device=prompt_mask.device)
    return torch.cat([pad_ids, prompt_ids], dim=1), torch.cat([pads, prompt_mask], dim=1)


def staircase_weights(masked: Tensor, t_token: Tensor, weighting: str) -> Tensor:
    """Per-token weights ``[S, B, L]`` float64 of S draws, from the masks ``[S, B, L]`` and the noise level
    of each token's block ``t_token [S, B, L]``:

    - one_over_t: ``masked / t_b / S``;
    - mean: ``masked / #masked / S'``, #masked over the whole row of that draw and S' the draws of the row
      that mask at least one token.
    """
    num = masked.shape[0]
    zero = torch.zeros((), dtype=torch.float64, device=masked.device)
    if weighting == "one_over_t":
        return torch.where(masked, 1.0 / (t_token.clamp_min(1e-300) * num), zero)
    count = masked.sum(-1)
    nonempty = (count > 0).sum(0, keepdim=True).clamp_min(1)
    per_row = 1.0 / (count.clamp_min(1) * nonempty).double()
    return torch.where(masked, per_row[..., None], zero)


def pick_logprobs(logits: Tensor, targets: Tensor, select: Tensor, arch: str, first_row: int) -> Tensor:
    """``[n, L, V]`` logits -> ``[n, L]`` float32 log-probs of ``targets`` at ``select``, 0 elsewhere.
    Raises ValueError on non-finite logits there (model output is untrusted)."""
    where = select.nonzero(as_tuple=True)
    picked = logits[where]
    finite = torch.isfinite(picked).all(-1)
    if not bool(finite.all()):
        bad = sorted({int(r) + first_row for r in where[0][~finite].tolist()})
        raise ValueError(
            f"model {arch} returned non-finite logits on staircase estimator rows {bad[:8]}; check the weights "
            "(a diverged update?) and the dtype"
        )
    values = token_logprobs(picked, targets[where]).float()
    return torch.zeros(select.shape, device=logits.device).index_put(where, values)


def per_block_logits(
    model: DiffusionModel, prompt_ids: Tensor, prompt_mask: Tensor, clean: Tensor, noisy: Tensor, block: int,
    block_size: int,
) -> Tensor:
    """Logits ``[n, block_size, V]`` of noisy block ``block`` from a separate block-causal pass over
    ``[prompt | clean blocks < block | noisy block]`` (the prompt width a multiple of ``block_size``)."""
    lo, hi = block * block_size, (block + 1) * block_size
    x = torch.cat([prompt_ids, clean[:, :lo], noisy[:, lo:hi]], dim=1)
    attn = torch.cat([prompt_mask, torch.ones_like(x[:, prompt_ids.shape[1]:])], dim=1)
    return model(x, attention_mask=attn, position_ids=positions_from_padding(attn))[:, -block_size:]


class StaircaseElboEstimator(LikelihoodEstimator):
    """See the module docstring. ``num_samples`` K staircase passes per sequence."""

    name = "staircase_elbo"
    default_coupling = "independent"

    def __init__(self, num_samples: int = 1, weighting: str = "mean", t_sampling: str = "uniform",
                 layout: str = "one_pass", coupling: str = "auto", chunk_rows: int | None = None) -> None:
        super().__init__(coupling, chunk_rows)
        if num_samples < 1:
            raise ValueError(f"staircase_elbo: num_samples must be >= 1, got {num_samples}")
        for option, value, allowed in (("weighting", weighting, WEIGHTINGS), ("t_sampling", t_sampling, T_SAMPLINGS),
                                       ("layout", layout, LAYOUTS)):
            if value not in allowed:
                raise ValueError(f"staircase_elbo: {option} {value!r} unknown; choose one of {', '.join(allowed)}")
        self.num_samples, self.weighting, self.t_sampling, self.layout = num_samples, weighting, t_sampling, layout

    def check(self, model: DiffusionModel, batch: EstimatorBatch) -> None:
        super().check(model, batch)
        block_size_of(model.spec, batch.completion_ids.shape[1])

    def draw(self, spec: ModelSpec, batch: EstimatorBatch, generator: torch.Generator) -> StaircaseDraw:
        completion = batch.completion_ids
        k, (bsz, glen), device = self.num_samples, completion.shape, completion.device
        bs = block_size_of(spec, glen)
        t = noise_levels(k, bsz * (glen // bs), generator, device, self.t_sampling == "stratified")
        t = t.view(k, bsz, glen // bs)
        t_token = t.repeat_interleave(bs, dim=-1)
        u = uniform((k, bsz, glen), generator, device)
        scored_mask = batch.completion_mask.to(device)
        masked = (u < t_token) & scored_mask[None]
        weight = staircase_weights(masked, t_token, self.weighting)
        clean = mask_where(completion, ~scored_mask, spec.mask_token_id)
        noisy = mask_where(clean.repeat(k, 1), masked.reshape(k * bsz, glen), spec.mask_token_id)
        return StaircaseDraw(
            clean=clean.repeat(k, 1), noisy=noisy, weight=weight.reshape(k * bsz, glen).float(),
            scored=masked.reshape(k * bsz, glen), t=t, num_samples=k, block_size=bs,
        )

    def row_logprobs(self, model: DiffusionModel, batch: EstimatorBatch, draw: StaircaseDraw) -> Tensor:
        """``[N, L]`` float32 log-probs of the clean tokens at ``draw.scored`` (0 elsewhere)."""
        device, bs, k = model.device, draw.block_size, draw.num_samples
        prompt_ids, prompt_mask = align_prompt(batch.prompt_ids, batch.prompt_mask, bs, model.spec.pad_token_id)
        prompt_ids, prompt_mask = prompt_ids.to(device).repeat(k, 1), prompt_mask.to(device).repeat(k, 1)
        clean, noisy, scored = draw.clean.to(device), draw.noisy.to(device), draw.scored.to(device)
        targets = batch.completion_ids.to(device).repeat(k, 1)
        rows, glen = clean.shape
        step = max(1, rows if self.chunk_rows is None else self.chunk_rows)
        out = []
        for lo in range(0, rows, step):
            hi = min(rows, lo + step)
            args = (model, prompt_ids[lo:hi], prompt_mask[lo:hi], clean[lo:hi], noisy[lo:hi])
            select = scored[lo:hi]
            if self.layout == "one_pass":
                out.append(pick_logprobs(staircase_logits(*args, block_size=bs), targets[lo:hi], select,
                                         model.spec.arch, lo))
                continue
            part = torch.zeros(hi - lo, glen, device=device)
            for b in range(glen // bs):
                cols = slice(b * bs, (b + 1) * bs)
                if bool(select[:, cols].any()):
                    logits = per_block_logits(*args, block=b, block_size=bs)
                    part = part + torch.nn.functional.pad(
                        pick_logprobs(logits, targets[lo:hi, cols], select[:, cols], model.spec.arch, lo),
                        (b * bs, glen - (b + 1) * bs))
            out.append(part)
        return torch.cat(out, dim=0)

    def score(self, model: DiffusionModel, batch: EstimatorBatch, draw: StaircaseDraw) -> LikelihoodEstimate:
        s, device = draw.num_samples, model.device
        bsz, glen = batch.completion_ids.shape
        logp = self.row_logprobs(model, batch, draw)
        token_logp = (draw.weight.to(device) * logp).view(s, bsz, glen).sum(0)
        times = draw.scored.to(device).view(s, bsz, glen).sum(0)
        passes = s if self.layout == "one_pass" else s * (glen // draw.block_size)
        return LikelihoodEstimate(
            token_logp=token_logp, token_mask=times > 0, seq_logp=token_logp.sum(-1),
            extras={"times_scored": times, "token_mean_logp": logp.view(s, bsz, glen).sum(0) / times.clamp_min(1),
                    "num_passes": torch.full((bsz,), float(passes), device=device)},
        )
