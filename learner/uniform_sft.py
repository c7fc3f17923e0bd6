"""Supervised fine-tuning loss of a uniform-noise block-diffusion model (DiffusionGemma), the published
objective (TRL's ``sft_diffusion_gemma.py``; NeMo AutoModel's recipe) on our staircase layout:

- every example draws one noise level t ~ U(t_min, 1) (t_min = 1e-3) and each completion token is
  replaced by a uniform vocabulary draw with probability t;
- one encoder pass over ``[prompt | clean completion]`` and one decoder pass over all noisy blocks at
  once (block b sees the prompt and clean blocks < b: `learner.estimators.uniform.staircase_masks`,
  NeMo's "supervise all blocks jointly"; TRL picks one block per example);
- self-conditioning with probability p per example (0.5): a first no-grad pass's logits feed the second;
- loss = flat mean cross-entropy over every scored completion position, corrupted or not (no 1/t: a
  surrogate, not the ELBO of docs/uniform_diffusion.md), plus ``encoder_weight`` times the encoder's
  autoregressive cross-entropy on the completion (the encoder shares the decoder's weights).

Not wired into ``stabledrl sft`` (learner/sft.py trains masked models); callers use :func:`uniform_sft_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from learner.estimators.base import EstimatorBatch, uniform
from learner.estimators.uniform import staircase_masks
from system.models.diffusion_gemma import DiffusionGemmaAdapter


@dataclass(frozen=True)
class UniformSftConfig:
    t_min: float = 1e-3
    self_conditioning_p: float = 0.5
    encoder_weight: float = 1.0


def corrupt(completion: Tensor, t: Tensor, vocab: int, generator: torch.Generator) -> Tensor:
    """Each token of ``completion [B, L]`` replaced by a uniform draw with probability ``t [B, 1]``."""
    device = completion.device
    hit = uniform(completion.shape, generator, device) < t
    random = (uniform(completion.shape, generator, device) * vocab).long().clamp_max(vocab - 1)
    return torch.where(hit, random, completion)


def masked_mean_ce(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy ``[B, L, V], [B, L], [B, L] bool -> []`` over the masked-in positions."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    return (ce * mask).sum() / mask.sum().clamp_min(1)


def uniform_sft_loss(model: DiffusionGemmaAdapter, batch: EstimatorBatch, generator: torch.Generator,
                     cfg: UniformSftConfig = UniformSftConfig()) -> tuple[Tensor, dict[str, float]]:
    """The loss (with gradients) and its parts ``{"decoder_ce", "encoder_ce"}`` of one batch."""
    device = model.device
    prompt, prompt_mask = batch.prompt_ids.to(device), batch.prompt_mask.to(device)
    clean, scored = batch.completion_ids.to(device), batch.completion_mask.to(device)
    (bsz, plen), length = prompt.shape, clean.shape[1]
    t = cfg.t_min + (1.0 - cfg.t_min) * uniform((bsz, 1), generator, device)
    noisy = corrupt(clean, t, model.spec.vocab_size, generator)
    key_mask = torch.cat([prompt_mask.bool(), torch.ones_like(scored)], dim=1)
    cache, hidden = model.encode_hidden(torch.cat([prompt, clean], dim=1), key_mask, model.new_cache(keep_all=True),
                                        torch.arange(plen + length, device=device)[None])
    masks = staircase_masks(prompt_mask, length, model.canvas_length, int(model.spec.extra["sliding_window"]))
    pos = torch.arange(plen, plen + length, device=device)[None]
    use_sc = uniform((bsz,), generator, device) < cfg.self_conditioning_p
    self_cond = None
    if bool(use_sc.any()):
        with torch.no_grad():
            self_cond = model.denoise(noisy, cache, pos, masks).to(model.dtype)
    logits = model.denoise(noisy, cache, pos, masks, self_cond, use_sc if self_cond is not None else None)
    decoder_ce = masked_mean_ce(logits, clean, scored)
    encoder_ce = masked_mean_ce(model.head_logits(hidden[:, plen - 1:plen + length - 1]), clean, scored)
    loss = decoder_ce + cfg.encoder_weight * encoder_ce
    return loss, {"decoder_ce": float(decoder_ce), "encoder_ce": float(encoder_ce)}
