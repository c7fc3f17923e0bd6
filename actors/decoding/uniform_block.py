"""Decoding for a uniform-noise block-diffusion model (DiffusionGemma): our own loop over
transformers' model calls, recording the trajectory the learner needs.

The algorithm is the one of transformers' ``DiffusionGemmaGenerationMixin.generate`` with the
released generation config (docs/uniform_diffusion.md section 4). Canvases of C tokens are decoded
left to right; before each, the causal encoder appends the clean context (the prompt, then the last
committed canvas) to the KV cache. Each canvas:

1. starts as C tokens drawn uniformly from the vocabulary;
2. runs up to N decoder steps, ``n = N .. 1``: logits (with the previous step's logits as
   self-conditioning) are divided by the linear temperature ``T_n = t_min + (t_max - t_min) n / N``;
   every position draws a sample from ``softmax(logits / T_n)``; the EB-sampler (Ben-Hamu et al. 2025,
   arXiv 2505.24857) accepts the k lowest-entropy positions with
   ``sum(entropy_1..k) - max(entropy_1..k) <= entropy_bound``, which take their sample; every other
   position is re-noised with a fresh uniform token;
3. stops early per row once the argmax canvas equals the previous step's (``stability_threshold``
   steps) and the mean entropy of the tempered logits is below ``confidence_threshold``; a stopped row
   is frozen while the others go on;
4. commits the argmax of the last step's tempered logits (not the sampled canvas). A row stops at the
   first canvas holding EOS; tokens after the EOS, and later canvases, become the pad id.

With the same seed the two agree token for token: our draws come, in the same order and shapes, from
an explicit ``torch.Generator`` where ``generate`` uses the global RNG (``torch.manual_seed(s)`` and
``torch.Generator().manual_seed(s)`` give the same stream). Where ours differs, and why:

- ``gen_length`` must be a multiple of C (``generate`` rounds ``max_new_tokens`` up to whole canvases);
- it returns the completion only, with ``filled`` marking the pads, and a trajectory: the decoder input
  canvas of every step of every block (self-conditioning is a function of the earlier canvases, so the
  canvases and the committed context rebuild every decoder pass exactly), the accepted positions, and
  the steps each row ran. ``generate`` returns no trajectory;
- per token: ``unmask_step`` is the global step (block k's step i is ``k * N + i``) from which the argmax
  stayed equal to the committed token; ``logprobs`` / ``entropies`` are of the last step's tempered
  distribution at the committed token (the vLLM convention: a marginal, not a trajectory likelihood).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from actors.decoding.reference import DecodeOutput, check_generator
from system.config import DecodingConfig
from system.diffusion import left_pad
from system.models.diffusion_gemma import DiffusionGemmaAdapter


@dataclass(frozen=True)
class UniformDecodeConfig:
    """The released generation config's diffusion fields (transformers' defaults)."""

    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    t_min: float = 0.4
    t_max: float = 0.8
    stability_threshold: int = 1
    confidence_threshold: float = 0.005

    def temperature(self, step: int) -> float:
        """``T_n`` for step ``n`` (steps remaining, N .. 1)."""
        return self.t_min + (self.t_max - self.t_min) * (step / self.max_denoising_steps)


@dataclass
class UniformTrajectory:
    """What the learner needs to rebuild every decoder pass. K blocks, N steps, C canvas tokens."""

    canvases: Tensor  # [B, K, N, C] long: decoder input at each step (frozen after a row stops)
    accepted: Tensor  # [B, K, N, C] bool: positions the EB-sampler accepted at that step
    steps: Tensor  # [B, K] long: decoder passes the row ran in each block (0 after it stopped)


@dataclass
class UniformDecodeOutput(DecodeOutput):
    trajectory: UniformTrajectory | None = None


def eb_accept(logits: Tensor, bound: float) -> Tensor:
    """EB-sampler acceptance ``[B, C, V] -> [B, C]`` bool: the k lowest-entropy positions with
    ``sum_{i<=k} H_i - max_{i<=k} H_i <= bound`` (sorted ascending, so the max is ``H_k``)."""
    entropy = torch.distributions.Categorical(logits=logits).entropy()
    sorted_h, order = torch.sort(entropy, dim=-1)
    keep_sorted = (torch.cumsum(sorted_h, dim=-1) - sorted_h) <= bound
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def uniform_tokens(shape: tuple[int, int], vocab: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randint(0, vocab, shape, generator=generator, device=generator.device).to(device)


class _Stopper:
    """Stable-and-confident stop: the argmax canvas equals each of the last ``threshold`` ones and the
    mean entropy of the tempered logits is below ``confidence``."""

    def __init__(self, cfg: UniformDecodeConfig) -> None:
        self.cfg = cfg
        self.history: Tensor | None = None

    def __call__(self, argmax: Tensor, logits: Tensor) -> Tensor:
        if self.cfg.stability_threshold == 0:
            stable = torch.ones(argmax.shape[0], dtype=torch.bool, device=argmax.device)
        else:
            if self.history is None:
                self.history = torch.full((self.cfg.stability_threshold, *argmax.shape), -1, dtype=argmax.dtype,
                                          device=argmax.device)
            stable = (self.history == argmax[None]).all(-1).all(0)
            self.history = torch.cat([self.history[1:], argmax[None]], dim=0)
        entropy = torch.distributions.Categorical(logits=logits).entropy()
        return stable & (entropy.mean(-1) < self.cfg.confidence_threshold)


@dataclass
class _Block:
    """Record of one canvas: per-step inputs, acceptances, argmax history, passes."""

    canvases: Tensor
    accepted: Tensor
    argmax_steps: Tensor
    steps: Tensor
    argmax: Tensor
    logits: Tensor


def denoise_block(model: DiffusionGemmaAdapter, cache: object, positions: Tensor, masks: dict, cfg: UniformDecodeConfig,
                  generator: torch.Generator, skip: Tensor) -> _Block:
    """Decode one canvas over ``cache`` (rows in ``skip`` already finished: their passes are not
    counted). Draw order per step, as ``generate``: the sample, then the renoise tokens."""
    bsz, clen, vocab, n_steps = skip.shape[0], model.canvas_length, model.spec.vocab_size, cfg.max_denoising_steps
    device = model.device
    canvas = uniform_tokens((bsz, clen), vocab, generator, device)
    argmax, self_cond = canvas, None
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    rec = _Block(canvases=torch.zeros(bsz, n_steps, clen, dtype=torch.long, device=device),
                 accepted=torch.zeros(bsz, n_steps, clen, dtype=torch.bool, device=device),
                 argmax_steps=torch.zeros(bsz, n_steps, clen, dtype=torch.long, device=device),
                 steps=torch.zeros(bsz, dtype=torch.long, device=device), argmax=canvas, logits=canvas)
    stopper = _Stopper(cfg)
    for i, step in enumerate(range(n_steps, 0, -1)):
        rec.steps += (~(done | skip)).long()
        rec.canvases[:, i] = canvas
        logits = model.denoise(canvas, cache, positions, masks, self_cond) / cfg.temperature(step)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        # generator on the model's device (uniform_generate checks it), where the probabilities are
        sample = torch.multinomial(probs.view(-1, vocab), 1, generator=generator).view(bsz, clen)
        new_argmax = logits.argmax(-1)
        accept = eb_accept(logits, cfg.entropy_bound)
        renoise = uniform_tokens((bsz, clen), vocab, generator, device)
        new_canvas = torch.where(accept, sample, renoise)  # accepted take their sample, the rest re-noise
        if done.any():
            new_argmax = torch.where(done[:, None], argmax, new_argmax)
            new_canvas = torch.where(done[:, None], canvas, new_canvas)
            logits = torch.where(done[:, None, None], self_cond, logits)
            accept = accept & ~done[:, None]
        done = done | stopper(new_argmax, logits)
        rec.accepted[:, i], rec.argmax_steps[:, i] = accept, new_argmax
        canvas, argmax, self_cond = new_canvas, new_argmax, logits.to(model.dtype)
        if bool(done.all()):
            rec.canvases[:, i + 1:] = canvas[:, None]
            rec.argmax_steps[:, i + 1:] = argmax[:, None]
            break
    rec.argmax, rec.logits = argmax, self_cond
    return rec


def settled_step(argmax_steps: Tensor, committed: Tensor) -> Tensor:
    """``[B, N, C], [B, C] -> [B, C]``: the first step from which the argmax equals the committed token."""
    n_steps = argmax_steps.shape[1]
    differs = argmax_steps != committed[:, None]
    idx = torch.arange(n_steps, device=committed.device)[None, :, None]
    last_diff = torch.where(differs, idx, torch.full_like(idx, -1)).amax(1)
    return last_diff + 1


def pad_after_eos(tokens: Tensor, eos_id: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """Tokens after the first EOS of each row become ``pad_id``; returns ``(tokens, padded [B, C])``."""
    is_eos = tokens == eos_id
    seen = is_eos.long().cumsum(-1)
    padded = (seen > 0) & ~((seen == 1) & is_eos)
    return torch.where(padded, torch.full_like(tokens, pad_id), tokens), padded


def uniform_generate(model: DiffusionGemmaAdapter, prompt_ids: Tensor, prompt_mask: Tensor, gen_length: int,
                     cfg: UniformDecodeConfig, generator: torch.Generator) -> UniformDecodeOutput:
    """Decode ``gen_length`` tokens after left-padded prompts ``[B, P]`` (see the module docstring)."""
    device = model.device
    check_generator(generator, device)
    clen, spec = model.canvas_length, model.spec
    if gen_length % clen:
        raise ValueError(f"gen_length {gen_length} is not a multiple of the canvas length {clen}; "
                         f"set decoding.gen_length to a multiple of {clen}")
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device).bool()
    bsz, plen = prompt_ids.shape
    n_blocks, n_steps = gen_length // clen, cfg.max_denoising_steps
    cache = model.new_cache()
    context, key_mask = prompt_ids, prompt_mask
    enc_pos = torch.arange(0, plen, device=device)[None]
    completion = torch.full((bsz, gen_length), spec.pad_token_id, dtype=torch.long, device=device)
    filled = torch.ones(bsz, gen_length, dtype=torch.bool, device=device)
    unmask = torch.zeros(bsz, gen_length, dtype=torch.long, device=device)
    logprobs = torch.zeros(bsz, gen_length, dtype=torch.float32, device=device)
    entropies = torch.zeros(bsz, gen_length, dtype=torch.float32, device=device)
    traj = UniformTrajectory(canvases=torch.zeros(bsz, n_blocks, n_steps, clen, dtype=torch.long, device=device),
                             accepted=torch.zeros(bsz, n_blocks, n_steps, clen, dtype=torch.bool, device=device),
                             steps=torch.zeros(bsz, n_blocks, dtype=torch.long, device=device))
    finished = torch.zeros(bsz, dtype=torch.bool, device=device)
    passes = 0
    for k in range(n_blocks):
        cache = model.encode(context, key_mask, cache, enc_pos)
        start = plen + k * clen
        dec_pos = torch.arange(start, start + clen, device=device)[None]
        key_mask = torch.cat([key_mask, torch.ones(bsz, clen, dtype=torch.bool, device=device)], dim=1)
        canvas = torch.zeros(bsz, clen, dtype=torch.long, device=device)
        rec = denoise_block(model, cache, dec_pos, model.decoder_masks(canvas, cache, key_mask), cfg, generator,
                            finished)
        passes += int(rec.steps.sum())
        committed = rec.argmax
        logp = torch.log_softmax(rec.logits.float(), -1)
        span = slice(k * clen, (k + 1) * clen)
        tokens, padded = pad_after_eos(committed, spec.eos_token_id, spec.pad_token_id)
        tokens = torch.where(finished[:, None], torch.full_like(tokens, spec.pad_token_id), tokens)
        completion[:, span] = tokens
        filled[:, span] = padded | finished[:, None]
        unmask[:, span] = settled_step(rec.argmax_steps, committed) + k * n_steps
        logprobs[:, span] = logp.gather(-1, committed[..., None]).squeeze(-1)
        entropies[:, span] = -(logp.exp() * logp).sum(-1)
        traj.canvases[:, k], traj.accepted[:, k], traj.steps[:, k] = rec.canvases, rec.accepted, rec.steps
        finished = finished | (committed == spec.eos_token_id).any(-1)
        if bool(finished.all()):
            break
        context, enc_pos = tokens, dec_pos
    steps_taken = traj.steps.sum(-1)
    return UniformDecodeOutput(prompt_ids=prompt_ids, prompt_mask=prompt_mask.long(), completion_ids=completion,
                               unmask_step=unmask, logprobs=logprobs, entropies=entropies, filled=filled,
                               steps_taken=steps_taken, forward_passes=passes, trajectory=traj)


class UniformBlockDecoder:
    """The rollout worker's decoder for a uniform-noise model: ``generate(prompts, generator)`` as the
    reference decoder's. ``decoding.steps`` is the number of denoising steps per canvas; the other
    diffusion fields are the released generation config's. Prompts are left-padded to a multiple of the
    canvas length, as the learner pads them, so both see the same positions (positions count pads)."""

    mode = "uniform_block"

    def __init__(self, model: DiffusionGemmaAdapter, params: DecodingConfig) -> None:
        self.model, self.params = model, params
        self.cfg = UniformDecodeConfig(max_denoising_steps=params.steps)

    def generate(self, prompts: list[list[int]] | list[Tensor], generator: torch.Generator | None = None
                 ) -> UniformDecodeOutput:
        if generator is None:
            generator = torch.Generator(device=self.model.device)
        ids, mask = left_pad(prompts, self.model.spec.pad_token_id, multiple_of=self.model.canvas_length)
        out = uniform_generate(self.model, ids, mask, self.params.gen_length, self.cfg, generator)
        out.decoder = self.mode
        return out
