"""The staircase layout: block-diffusion likelihoods for every block in one forward pass
(BD3-LM / SDAR / TraceRL training; ALGORITHMS.md section 4).

The sequence is ``[prompt P | clean response x0 (L) | noisy response xt (L)]``; the noisy copy reuses
the clean copy's position ids. With b(.) the response block of a token (blocks of ``block_size``
counted from the start of the response), query -> key may attend iff:

- prompt -> prompt: all real prompt tokens (``full``) or block-causally (``block``, blocks counted from
  position 0 of the left-padded prompt, which block families pad to a multiple of the block size);
- clean token in block b -> the prompt and clean tokens of blocks <= b;
- noisy token in block b -> the prompt, clean tokens of blocks < b, and noisy tokens of block b.

Nothing attends another block's noisy tokens and clean tokens never attend noisy ones, so the logits
at noisy block b are p(x0_b | xt_b, x0_<b, prompt): every block is scored at its own noise level in
one pass. Pad keys are never attended, except that a pad query attends itself (no all-False row).
"""

from __future__ import annotations

from typing import Literal

import torch

from system.diffusion import positions_from_padding
from system.models.base import DiffusionModel

PromptAttention = Literal["full", "block"]


def staircase_mask(
    prompt_mask: torch.Tensor, response_len: int, block_size: int, prompt_attention: PromptAttention = "block"
) -> torch.Tensor:
    """Boolean attention mask ``[B, 1, P + 2L, P + 2L]`` (True = may attend) of the staircase layout.

    Args:
        prompt_mask: ``[B, P]`` 1 at real prompt tokens (left padding).
        response_len: L, a multiple of ``block_size``.
    """
    if response_len % block_size:
        raise ValueError(f"response length {response_len} must be a multiple of the block size {block_size}")
    bsz, plen = prompt_mask.shape
    device = prompt_mask.device
    total = plen + 2 * response_len
    idx = torch.arange(total, device=device)
    is_prompt, is_clean, is_noisy = idx < plen, (idx >= plen) & (idx < plen + response_len), idx >= plen + response_len
    # Response block of every position (clean and noisy copies share blocks); prompt gets -1.
    offset = torch.where(is_noisy, idx - plen - response_len, idx - plen)
    block = torch.where(is_prompt, torch.full_like(idx, -1), offset // block_size)
    q, k = (slice(None), None), (None, slice(None))
    mask = is_prompt[k] & ~is_prompt[q]  # response rows see the whole prompt
    if prompt_attention == "block":
        prompt_block = idx // block_size
        mask |= is_prompt[q] & is_prompt[k] & (prompt_block[k] <= prompt_block[q])
    else:
        mask |= is_prompt[q] & is_prompt[k]
    mask |= is_clean[q] & is_clean[k] & (block[k] <= block[q])
    mask |= is_noisy[q] & is_clean[k] & (block[k] < block[q])
    mask |= is_noisy[q] & is_noisy[k] & (block[k] == block[q])
    real = torch.cat([prompt_mask.bool(), torch.ones(bsz, 2 * response_len, dtype=torch.bool, device=device)], 1)
    out = mask[None] & real[:, None, :]
    eye = torch.eye(total, dtype=torch.bool, device=device)[None]
    out |= eye & ~real[:, :, None]  # a pad query also attends itself
    return out[:, None]


def staircase_inputs(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor,
    block_size: int, prompt_attention: PromptAttention = "block",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids [B, P+2L], mask [B, 1, P+2L, P+2L], position_ids [B, P+2L])`` of the layout."""
    if clean.shape != noisy.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and noisy {tuple(noisy.shape)} responses differ in shape")
    length = clean.shape[1]
    prompt_pos = positions_from_padding(prompt_mask)
    start = prompt_mask.long().sum(-1, keepdim=True)
    response_pos = start + torch.arange(length, device=clean.device)[None]
    input_ids = torch.cat([prompt_ids, clean, noisy], dim=1)
    position_ids = torch.cat([prompt_pos, response_pos, response_pos], dim=1)
    mask = staircase_mask(prompt_mask, length, block_size, prompt_attention)
    return input_ids, mask, position_ids


def staircase_logits(
    model: DiffusionModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, clean: torch.Tensor,
    noisy: torch.Tensor, block_size: int | None = None, prompt_attention: PromptAttention | None = None,
) -> torch.Tensor:
    """Logits ``[B, L, V]`` at the noisy copy: row j scores clean token j given its block's noisy
    state and the clean earlier blocks. Block size and prompt attention default to the model's."""
    block_size = block_size or model.block_size
    if block_size is None:
        raise ValueError(f"{model.spec.arch} is not a block model: pass block_size for a staircase pass")
    if prompt_attention is None:
        prompt_attention = "block" if model.attention == "block" else "full"
    ids, mask, pos = staircase_inputs(prompt_ids, prompt_mask, clean, noisy, block_size, prompt_attention)
    logits = model(ids, attention_mask=mask, position_ids=pos)
    return logits[:, prompt_ids.shape[1] + clean.shape[1]:]
