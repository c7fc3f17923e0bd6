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

from actors.decoding.modes import decoder_mode
from actors.decoding.parallel import PARALLEL_RULES, parallel_count
from system.config import DecodingConfig
from system.diffusion import block_layout, left_pad, num_transfer_tokens, positions_from_padding
from system.models.base import DiffusionModel, KVCache


@dataclass
class DecodeOutput:
    """Completions and their trajectories.

    Shapes: B rows, P (padded) prompt length, L generation length.
    """

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P] 1 = real token
    completion_ids: torch.Tensor  # [B, L]
    unmask_step: torch.Tensor  # [B, L] long: the row's step (counted per row) at which each token was revealed
    logprobs: torch.Tensor  # [B, L] float32: log-prob of the token under the sampling distribution
    entropies: torch.Tensor  # [B, L] float32: entropy of that distribution at reveal
    filled: torch.Tensor  # [B, L] bool: filled with EOS after the row stopped, not sampled
    steps_taken: torch.Tensor  # [B] long: steps the row was decoded for
    forward_passes: int  # row-level forward passes (a CFG step counts 2 per row)
    forward_tokens: int = 0  # query tokens run through the model, summed over rows and passes
    decoder: str = "reference"  # the decoding mode (actors.decoding.fast.decoder_mode)

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
        # generator on the logits' device: ReferenceDecoder.generate checks it (check_generator)
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
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(-1, order, positions)
    return (ranks < k[:, None]) & torch.isfinite(confidence)


def check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    """The Gumbel noise is [rows, vocab] float64 per step: it is drawn where the logits are, so the
    generator must live there too (CUDA refuses a CPU generator; moving the noise would cost more than
    the decoder's whole step)."""
    if generator is None:
        return
    want = torch.device(device)
    got = generator.device
    if got.type != want.type or (want.index is not None and got.index not in (None, want.index)):
        raise ValueError(f"the decoding generator is on {got}, the model on {want}; create it with "
                         f"torch.Generator(device=model.device)")


@dataclass
class _Batch:
    """Mutable decoding state of one ``generate`` call (B rows, P prompt, L completion)."""

    x: torch.Tensor  # [B, P + L] tokens, mask id where not yet revealed
    prompt_mask: torch.Tensor  # [B, P]
    attn: torch.Tensor  # [B, P + L] padding mask
    pos: torch.Tensor  # [B, P + L] position ids
    plen: int
    unmask_step: torch.Tensor
    logprobs: torch.Tensor
    entropies: torch.Tensor
    filled: torch.Tensor
    steps_taken: torch.Tensor
    active: torch.Tensor  # [B] bool, rows still decoding
    window: KVCache | None = None  # approximate decoders: this block's refreshed cache (actors.decoding.fast)
    window_rows: torch.Tensor | None = None  # the rows it holds
    passes: int = 0
    tokens: int = 0


class ReferenceDecoder:
    """LLaDA semi-autoregressive sampler over any `DiffusionModel` (see the module docstring).

    For block-attention models with ``decoding.use_cache`` the finished blocks are kept in an exact KV
    cache: the prompt is prefilled once, each denoising step runs only the current block over the
    cache, and a finished block is committed with one more pass. Outputs equal the uncached decoder's.
    """

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
        self.use_cache = params.use_cache and model.attention == "block"
        self.mode = decoder_mode(model.attention, params)
        if self.use_cache and params.cfg_scale > 0:
            raise ValueError("classifier-free guidance is not supported with the block KV cache; set decoding.use_cache=false")

    def _logits(self, x: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, plen: int, pmask: torch.Tensor) -> torch.Tensor:
        if self.params.cfg_scale <= 0:
            return self.model(x, attention_mask=attn, position_ids=pos).float()
        uncond = x.clone()
        uncond[:, :plen] = torch.where(pmask.bool(), self.model.mask_token_id, x[:, :plen])
        both = self.model(torch.cat([x, uncond]), attention_mask=attn.repeat(2, 1), position_ids=pos.repeat(2, 1))
        cond, unc = both.float().chunk(2)
        return unc + (self.params.cfg_scale + 1.0) * (cond - unc)

    def _init(self, prompts: list[list[int]] | list[torch.Tensor]) -> _Batch:
        model, glen = self.model, self.params.gen_length
        align = model.block_size if model.attention == "block" and model.block_size else 1
        prompt_ids, prompt_mask = left_pad(prompts, model.spec.pad_token_id, multiple_of=align)
        device = model.device
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        bsz = prompt_ids.shape[0]
        masks = torch.full((bsz, glen), model.mask_token_id, dtype=torch.long, device=device)
        attn = torch.cat([prompt_mask, torch.ones(bsz, glen, dtype=torch.long, device=device)], 1)
        zeros = torch.zeros(bsz, glen, device=device)
        return _Batch(
            x=torch.cat([prompt_ids, masks], 1), prompt_mask=prompt_mask, attn=attn,
            pos=positions_from_padding(attn), plen=prompt_ids.shape[1],
            unmask_step=torch.full((bsz, glen), -1, dtype=torch.long, device=device),
            logprobs=zeros, entropies=zeros.clone(), filled=torch.zeros(bsz, glen, dtype=torch.bool, device=device),
            steps_taken=torch.zeros(bsz, dtype=torch.long, device=device),
            active=torch.ones(bsz, dtype=torch.bool, device=device),
        )

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]] | list[torch.Tensor], generator: torch.Generator | None = None
    ) -> DecodeOutput:
        """Decode one completion per prompt. Deterministic for a given generator state, which must be on
        the model's device (``torch.Generator(device=model.device)``)."""
        check_generator(generator, self.model.device)
        p = self.params
        b = self._init(prompts)
        cache = None
        if self.use_cache:
            cache = KVCache()
            self.model(b.x[:, :b.plen], attention_mask=b.prompt_mask, position_ids=b.pos[:, :b.plen],
                       cache=cache, store_cache=True)
            b.passes += b.x.shape[0]
            b.tokens += b.x.shape[0] * b.plen
        num_blocks, _ = block_layout(p.gen_length, p.block_length, p.steps)
        step = 0
        for block in range(num_blocks):
            lo, hi = b.plen + block * p.block_length, b.plen + (block + 1) * p.block_length
            step = self._decode_block(b, lo, hi, step, cache, generator)
            if cache is not None:
                self.model(b.x[:, lo:hi], attention_mask=b.attn[:, :hi], position_ids=b.pos[:, lo:hi],
                           cache=cache, store_cache=True)
                b.passes += b.x.shape[0]
                b.tokens += b.x.shape[0] * (hi - lo)
            if p.stop_at_eos:
                self._stop_rows(b, lo, hi)
            if not bool(b.active.any()):
                break
        return DecodeOutput(
            prompt_ids=b.x[:, :b.plen], prompt_mask=b.prompt_mask, completion_ids=b.x[:, b.plen:],
            unmask_step=b.unmask_step, logprobs=b.logprobs, entropies=b.entropies, filled=b.filled,
            steps_taken=b.steps_taken, forward_passes=b.passes, forward_tokens=b.tokens, decoder=self.mode,
        )

    def _decode_block(
        self, b: _Batch, lo: int, hi: int, step: int, cache: KVCache | None, generator: torch.Generator | None
    ) -> int:
        """Reveal every masked token of block ``[lo, hi)``; returns the next global step index."""
        p, mask_id, plen = self.params, self.model.mask_token_id, b.plen
        _, steps_per_block = block_layout(p.gen_length, p.block_length, p.steps)
        threshold = p.remasking in PARALLEL_RULES
        schedule = num_transfer_tokens((b.x[:, lo:hi] == mask_id).sum(-1), steps_per_block)
        for i in range(p.block_length if threshold else steps_per_block):
            pending = b.active & (b.x[:, lo:hi] == mask_id).any(-1)
            if not bool(pending.any()):
                break
            rows = pending.nonzero().squeeze(-1)
            logits = self._block_logits(b, rows, lo, hi, i, cache)
            k = None if threshold else schedule[rows, i]
            reveal, tokens, lp, ent = self._step(b.x[rows, lo:hi], logits, k, generator)
            region = b.x[rows, lo:hi]
            b.x[rows, lo:hi] = torch.where(reveal, tokens, region)
            c_lo, c_hi = lo - plen, hi - plen
            # Each row counts its own steps: under a parallel rule rows finish a block after different
            # numbers of steps, and a row's trajectory must not depend on the others in its batch.
            row_step = b.steps_taken[rows, None]
            b.unmask_step[rows, c_lo:c_hi] = torch.where(reveal, row_step, b.unmask_step[rows, c_lo:c_hi])
            b.logprobs[rows, c_lo:c_hi] = torch.where(reveal, lp, b.logprobs[rows, c_lo:c_hi])
            b.entropies[rows, c_lo:c_hi] = torch.where(reveal, ent, b.entropies[rows, c_lo:c_hi])
            b.steps_taken[rows] += 1
            step += 1
        return step

    def _block_logits(
        self, b: _Batch, rows: torch.Tensor, lo: int, hi: int, i: int, cache: KVCache | None
    ) -> torch.Tensor:
        """Logits ``[len(rows), hi - lo, V]`` of the block at its ``i``-th step, for the still-pending
        ``rows``: the whole sequence through the model, or the block over the exact block cache."""
        if cache is not None:
            # The cache holds every row, so every row runs; only pending rows sample (the same
            # random draws as the uncached path).
            logits = self.model(b.x[:, lo:hi], attention_mask=b.attn[:, :hi], position_ids=b.pos[:, lo:hi],
                                cache=cache).float()[rows]
            b.passes += b.x.shape[0]
            b.tokens += b.x.shape[0] * (hi - lo)
            return logits
        copies = 2 if self.params.cfg_scale > 0 else 1
        b.passes += rows.numel() * copies
        b.tokens += rows.numel() * copies * b.x.shape[1]
        return self._logits(b.x[rows], b.attn[rows], b.pos[rows], b.plen, b.prompt_mask[rows])[:, lo:hi]

    def _step(
        self, x: torch.Tensor, logits: torch.Tensor, k: torch.Tensor | None, generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One denoising step on the current block of some rows: ``x [b, n]``, ``logits [b, n, V]``.
        Returns ``(reveal [b, n] bool, tokens, logprobs, entropies)``. ``k`` tokens per row are revealed;
        ``k=None`` (threshold / factor remasking, `actors.decoding.parallel`) reveals as many of the most
        confident positions as the rule allows, at least one."""
        p = self.params
        b, n, vocab = logits.shape
        filtered = filter_logits(logits, p.top_k, p.top_p)
        tokens, lp, ent = sample_tokens(filtered.reshape(-1, vocab), p.temperature, generator)
        tokens, lp, ent = tokens.view(b, n), lp.view(b, n), ent.view(b, n)
        if p.remasking == "random":
            # generator on the model's device: checked in generate (check_generator)
            confidence = torch.rand((b, n), generator=generator, device=x.device, dtype=torch.float64)
        else:
            probs = torch.softmax(logits.double(), dim=-1)
            confidence = probs.gather(-1, tokens[..., None]).squeeze(-1)
        eligible = x == self.model.mask_token_id
        confidence = torch.where(eligible, confidence, torch.full_like(confidence, float("-inf")))
        if k is None:
            k = parallel_count(p.remasking, confidence, p.confidence_threshold, p.parallel_factor)
        return select_reveal(confidence, k), tokens, lp, ent

    def _stop_rows(self, b: _Batch, lo: int, hi: int) -> None:
        """Rows whose just-finished block is all EOS stop; their later positions become EOS."""
        eos = self.model.spec.eos_token_id
        done = b.active & (b.x[:, lo:hi] == eos).all(-1)
        if not bool(done.any()):
            return
        b.active &= ~done
        if hi == b.x.shape[1]:
            return
        rest = slice(hi - b.plen, None)
        b.x[done, hi:] = eos
        b.filled[done, rest] = True
        b.unmask_step[done, rest] = (b.steps_taken[done] - 1)[:, None]
