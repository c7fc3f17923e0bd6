"""The reference dLLM sampler: LLaDA semi-autoregressive decoding with low-confidence or random
remasking (LLaDA, Nie et al. 2025, Algorithm 4/5; ALGORITHMS.md section 1).

x = prompt | L mask tokens. The completion is decoded in L / B blocks, left to right; each block gets
T / (L / B) steps and each step reveals ``num_transfer_tokens`` of the block's masked positions:

1. logits = model(x) (with classifier-free guidance: l_u + (s + 1) (l_c - l_u), l_u from the input
   whose prompt is fully masked);
2. x0 = argmax(logits / temperature + Gumbel) after top-k / top-p filtering. The Gumbel noise is drawn
   in float64: in low precision the largest logits win too often and sampling is biased;
3. confidence = softmax(logits)[x0] (no temperature) for ``low_confidence``, U(0, 1) for ``random``;
   positions outside the current block, and positions already revealed, get -inf;
4. the top-``k`` positions by confidence are revealed; revealed tokens never change.

Departures from LLaDA's ``generate.py`` (behaviour is otherwise the same): prompts of different
lengths are left-padded with a padding mask and positions starting at 0 on the first real token; a
row stops once a whole block decodes to EOS (its remaining positions are filled with EOS, recorded
as revealed at that step with ``filled`` set), and finished rows leave the batch; for each revealed
token the step (``unmask_step``), and the log-prob and entropy of the sampling distribution (the
tempered, filtered one; the untempered one at temperature 0) are recorded so that AGRPO can rebuild
every state: the state before step t masks every token with ``unmask_step >= t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from system.config import DecodingConfig
from system.diffusion import block_layout, left_pad, num_transfer_tokens, positions_from_padding
from system.models.base import DiffusionModel


@dataclass
class DecodeOutput:
    """Completions and their trajectories.

    Shapes: B rows, P (padded) prompt length, L generation length.
    """

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P] 1 = real token
    completion_ids: torch.Tensor  # [B, L]
    unmask_step: torch.Tensor  # [B, L] long: global step at which each token was revealed
    logprobs: torch.Tensor  # [B, L] float32: log-prob of the token under the sampling distribution
    entropies: torch.Tensor  # [B, L] float32: entropy of that distribution at reveal
    filled: torch.Tensor  # [B, L] bool: filled with EOS after the row stopped, not sampled
    steps_taken: torch.Tensor  # [B] long: steps the row was decoded for
    forward_passes: int  # row-level forward passes (a CFG step counts 2 per row)

    @property
    def sequences(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering: removed entries become -inf. ``[..., V]``."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass strictly before it already reaches top_p (keeps at least one).
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gumbel-max sampling in float64. ``logits [N, V]`` (already filtered) ->
    ``(tokens [N], logprob [N], entropy [N])`` of the sampling distribution."""
    logits64 = logits.double()
    if temperature > 0:
        scaled = logits64 / temperature
        u = torch.rand(scaled.shape, generator=generator, device=scaled.device, dtype=torch.float64)
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
        tokens = torch.argmax(scaled + gumbel, dim=-1)
    else:
        scaled = logits64
        tokens = torch.argmax(scaled, dim=-1)
    logp = torch.log_softmax(scaled, dim=-1)
    token_logp = logp.gather(-1, tokens[:, None]).squeeze(-1)
    p = logp.exp()
    entropy = -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)
    return tokens, token_logp.float(), entropy.float()


def select_reveal(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per row, the ``k[i]`` positions of highest confidence (ties broken by position).
    ``confidence [B, L]`` (-inf = not eligible), ``k [B]`` -> bool ``[B, L]``."""
    order = torch.sort(confidence, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1]).expand_as(order))
    return (ranks < k[:, None]) & torch.isfinite(confidence)


class ReferenceDecoder:
    """LLaDA semi-autoregressive sampler over any `DiffusionModel` (see the module docstring)."""

    def __init__(self, model: DiffusionModel, params: DecodingConfig) -> None:
        self.model = model
        self.params = params
        block_layout(params.gen_length, params.block_length, params.steps)
        bs = model.block_size
        if model.attention == "block" and bs is not None and params.block_length % bs:
            raise ValueError(
                f"decoding.block_length ({params.block_length}) must be a multiple of the model's block "
                f"size ({bs}) for a block-attention model"
            )

    def _logits(self, x: torch.Tensor, pad: torch.Tensor, pos: torch.Tensor, prompt_len: int) -> torch.Tensor:
        attn = torch.cat([pad, torch.ones_like(x[:, prompt_len:])], dim=1)
        if self.params.cfg_scale <= 0:
            return self.model(x, attention_mask=attn, position_ids=pos).float()
        uncond = x.clone()
        uncond[:, :prompt_len] = torch.where(pad.bool(), self.model.mask_token_id, x[:, :prompt_len])
        both = self.model(torch.cat([x, uncond]), attention_mask=attn.repeat(2, 1), position_ids=pos.repeat(2, 1))
        cond, unc = both.float().chunk(2)
        return unc + (self.params.cfg_scale + 1.0) * (cond - unc)

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]] | list[torch.Tensor], generator: torch.Generator | None = None
    ) -> DecodeOutput:
        """Decode one completion per prompt. Deterministic for a given generator state."""
        p, model = self.params, self.model
        mask_id, eos_id = model.mask_token_id, model.spec.eos_token_id
        align = model.block_size if model.attention == "block" and model.block_size else 1
        prompt_ids, prompt_mask = left_pad(prompts, model.spec.pad_token_id, multiple_of=align)
        device = model.device
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        bsz, plen, glen = prompt_ids.shape[0], prompt_ids.shape[1], p.gen_length
        x = torch.cat([prompt_ids, torch.full((bsz, glen), mask_id, dtype=torch.long, device=device)], 1)
        full_pad = torch.cat([prompt_mask, torch.ones(bsz, glen, dtype=torch.long, device=device)], 1)
        pos = positions_from_padding(full_pad)
        unmask_step = torch.full((bsz, glen), -1, dtype=torch.long, device=device)
        logprobs = torch.zeros(bsz, glen, device=device)
        entropies = torch.zeros(bsz, glen, device=device)
        filled = torch.zeros(bsz, glen, dtype=torch.bool, device=device)
        steps_taken = torch.zeros(bsz, dtype=torch.long, device=device)
        active = torch.ones(bsz, dtype=torch.bool, device=device)
        num_blocks, steps_per_block = block_layout(glen, p.block_length, p.steps)
        passes = 0
        for block in range(num_blocks):
            lo, hi = plen + block * p.block_length, plen + (block + 1) * p.block_length
            schedule = num_transfer_tokens((x[:, lo:hi] == mask_id).sum(-1), steps_per_block)
            for i in range(steps_per_block):
                rows = active.nonzero().squeeze(-1)
                if rows.numel() == 0:
                    break
                step = block * steps_per_block + i
                xr = x[rows]
                logits = self._logits(xr, prompt_mask[rows], pos[rows], plen)
                passes += rows.numel() * (2 if p.cfg_scale > 0 else 1)
                reveal, tokens, lp, ent = self._step(xr, logits, lo, hi, schedule[rows, i], generator)
                x[rows] = torch.where(reveal, tokens, xr)
                comp = reveal[:, plen:]
                unmask_step[rows] = torch.where(comp, step, unmask_step[rows])
                logprobs[rows] = torch.where(comp, lp[:, plen:], logprobs[rows])
                entropies[rows] = torch.where(comp, ent[:, plen:], entropies[rows])
                steps_taken[rows] = step + 1
            if p.stop_at_eos:
                self._stop_rows(x, active, unmask_step, filled, steps_taken, lo, hi, plen, eos_id)
        return DecodeOutput(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=x[:, plen:],
            unmask_step=unmask_step, logprobs=logprobs, entropies=entropies, filled=filled,
            steps_taken=steps_taken, forward_passes=passes,
        )

    def _step(
        self, x: torch.Tensor, logits: torch.Tensor, lo: int, hi: int, k: torch.Tensor,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One denoising step on rows ``x [b, N]``: which positions to reveal, with what tokens.

        Only the current block ``[lo, hi)`` can be revealed, so sampling and confidence are computed
        there alone; the returned tensors are full width (zeros / False outside the block)."""
        p = self.params
        block_logits = logits[:, lo:hi]
        b, n, vocab = block_logits.shape
        filtered = filter_logits(block_logits, p.top_k, p.top_p)
        tokens, lp, ent = sample_tokens(filtered.reshape(-1, vocab), p.temperature, generator)
        tokens, lp, ent = tokens.view(b, n), lp.view(b, n), ent.view(b, n)
        if p.remasking == "low_confidence":
            probs = torch.softmax(block_logits.double(), dim=-1)
            confidence = probs.gather(-1, tokens[..., None]).squeeze(-1)
        else:
            confidence = torch.rand((b, n), generator=generator, device=x.device, dtype=torch.float64)
        eligible = x[:, lo:hi] == self.model.mask_token_id
        confidence = torch.where(eligible, confidence, torch.full_like(confidence, float("-inf")))
        reveal = torch.zeros_like(x, dtype=torch.bool)
        reveal[:, lo:hi] = select_reveal(confidence, k)
        full_tokens, full_lp, full_ent = x.clone(), torch.zeros_like(x, dtype=lp.dtype), torch.zeros_like(x, dtype=ent.dtype)
        full_tokens[:, lo:hi], full_lp[:, lo:hi], full_ent[:, lo:hi] = tokens, lp, ent
        return reveal, full_tokens, full_lp, full_ent

    def _stop_rows(
        self, x: torch.Tensor, active: torch.Tensor, unmask_step: torch.Tensor, filled: torch.Tensor,
        steps_taken: torch.Tensor, lo: int, hi: int, plen: int, eos_id: int,
    ) -> None:
        """Rows whose just-finished block is all EOS stop; their later positions become EOS."""
        done = active & (x[:, lo:hi] == eos_id).all(-1)
        if not bool(done.any()) or hi == x.shape[1]:
            return
        rest = slice(hi - plen, None)
        x[done, hi:] = eos_id
        filled[done, rest] = True
        unmask_step[done, rest] = (steps_taken[done] - 1)[:, None]
        active &= ~done
