"""Masked-diffusion math shared by actors and learner: the forward masking process, the block layout of
semi-autoregressive decoding, and rebuilding intermediate decoding states from per-token unmask steps.

All randomness goes through an explicit ``torch.Generator``; nothing here touches the global RNG.
"""

from __future__ import annotations

import torch


def sample_t(batch: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Noise levels ``t ~ U(0, 1]``, shape ``[batch]`` (``1 - U[0, 1)``, so t is never 0), on ``device``.
    Drawn on the generator's device (a CPU generator cannot fill a CUDA tensor), then moved."""
    u = torch.rand(batch, generator=generator, device=generator.device, dtype=torch.float64)
    return (1.0 - u).to(device=device, dtype=torch.float32)


def forward_mask(
    tokens: torch.Tensor,
    t: torch.Tensor,
    maskable: torch.Tensor,
    mask_token_id: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward process q(x_t | x_0): mask each maskable token independently with probability t.

    Args:
        tokens: ``[B, L]`` clean tokens x_0.
        t: ``[B]`` noise level per row, in (0, 1].
        maskable: ``[B, L]`` bool, True where a token may be masked (e.g. completion tokens).
        mask_token_id: id written at masked positions.
        generator: source of randomness, on any device: the draw is made there and moved to ``tokens``'.
    Returns:
        ``(noisy [B, L], masked [B, L] bool)``.
    """
    u = torch.rand(tokens.shape, generator=generator, device=generator.device).to(tokens.device)
    masked = (u < t[:, None].to(u.dtype)) & maskable
    noisy = torch.where(masked, torch.full_like(tokens, mask_token_id), tokens)
    return noisy, masked


def num_transfer_tokens(masked_count: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to reveal at each of ``steps`` steps: the count spread evenly, the remainder to the
    earliest steps (LLaDA). ``masked_count [B]`` -> ``[B, steps]`` long; each row sums to its count.

    Example: 10 masked tokens over 4 steps -> [3, 3, 2, 2].
    """
    base = masked_count // steps
    remainder = masked_count % steps
    out = base[:, None].expand(-1, steps).clone()
    out += (torch.arange(steps, device=masked_count.device)[None, :] < remainder[:, None]).long()
    return out


def block_layout(gen_length: int, block_length: int, steps: int) -> tuple[int, int]:
    """``(num_blocks, steps_per_block)`` of semi-autoregressive decoding, validating divisibility."""
    if gen_length % block_length:
        raise ValueError(f"block_length {block_length} must divide gen_length {gen_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps {steps} must be a multiple of the number of blocks {num_blocks}")
    return num_blocks, steps // num_blocks


def rebuild_state(
    completion: torch.Tensor, unmask_step: torch.Tensor, step: int | torch.Tensor, mask_token_id: int
) -> torch.Tensor:
    """The completion as the decoder saw it *before* step ``step``: every token revealed at a step
    ``>= step`` is masked (s_t in ALGORITHMS.md section 1).

    Args:
        completion: ``[B, L]`` final tokens.
        unmask_step: ``[B, L]`` global step at which each token was revealed.
        step: an int, or ``[B]`` per row.
    """
    step_t = torch.as_tensor(step, device=completion.device)
    if step_t.dim() == 1:
        step_t = step_t[:, None]
    return torch.where(unmask_step >= step_t, torch.full_like(completion, mask_token_id), completion)


def positions_from_padding(padding_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left-padded rows: 0 at the first real token; pads get 0.
    ``[B, L]`` (1 = real) -> ``[B, L]`` long."""
    return (padding_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(
    sequences: list[list[int]] | list[torch.Tensor], pad_id: int, multiple_of: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to one length (rounded up to ``multiple_of``).
    Returns ``(ids [B, P], padding_mask [B, P])`` with 1 at real tokens, on the CPU (callers move them to
    the model: the rows are written one by one, cheap on the host, a launch each on a GPU)."""
    rows = [torch.as_tensor(s, dtype=torch.long, device="cpu") for s in sequences]
    if not rows or any(r.dim() != 1 or r.numel() == 0 for r in rows):
        raise ValueError("every sequence must be a non-empty 1D list of token ids")
    width = max(r.numel() for r in rows)
    width = -(-width // multiple_of) * multiple_of
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device="cpu")
    mask = torch.zeros((len(rows), width), dtype=torch.long, device="cpu")
    for i, r in enumerate(rows):
        ids[i, width - r.numel():] = r
        mask[i, width - r.numel():] = 1
    return ids, mask
