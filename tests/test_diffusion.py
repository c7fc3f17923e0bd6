"""Masked-diffusion math: transfer schedule, forward masking, noise levels, state rebuilding, padding."""

from __future__ import annotations

import math

import pytest
import torch

from system.diffusion import (
    block_layout,
    forward_mask,
    left_pad,
    num_transfer_tokens,
    positions_from_padding,
    rebuild_state,
    sample_t,
)

MASK = 99


# --------------------------------------------------------------------------- num_transfer_tokens


@pytest.mark.parametrize(
    ("count", "steps", "expected"),
    [
        (10, 4, [3, 3, 2, 2]),  # 10 = 4*2 + 2: the 2 extra go to the first two steps
        (7, 7, [1, 1, 1, 1, 1, 1, 1]),  # 7 = 7*1 + 0
        (3, 5, [1, 1, 1, 0, 0]),  # 3 = 5*0 + 3
        (0, 3, [0, 0, 0]),
        (8, 1, [8]),
        (9, 3, [3, 3, 3]),  # 9 = 3*3 + 0
        (11, 3, [4, 4, 3]),  # 11 = 3*3 + 2
    ],
)
def test_num_transfer_tokens_single(count: int, steps: int, expected: list[int]) -> None:
    out = num_transfer_tokens(torch.tensor([count]), steps)
    assert out.dtype == torch.long
    assert out.tolist() == [expected]


def test_num_transfer_tokens_batch_rows_sum_to_count() -> None:
    counts = torch.tensor([10, 0, 3, 17, 4])
    out = num_transfer_tokens(counts, 4)
    assert out.tolist() == [
        [3, 3, 2, 2],  # 10 = 4*2 + 2
        [0, 0, 0, 0],
        [1, 1, 1, 0],  # 3 = 4*0 + 3
        [5, 4, 4, 4],  # 17 = 4*4 + 1
        [1, 1, 1, 1],
    ]
    assert torch.equal(out.sum(1), counts)


def test_num_transfer_tokens_is_non_increasing_and_balanced() -> None:
    counts = torch.arange(0, 40)
    out = num_transfer_tokens(counts, 6)
    assert torch.equal(out.sum(1), counts)
    assert bool((out[:, :-1] >= out[:, 1:]).all())
    assert bool((out.max(1).values - out.min(1).values <= 1).all())


# --------------------------------------------------------------------------- forward_mask


def test_forward_mask_only_maskable_and_mask_id() -> None:
    g = torch.Generator().manual_seed(0)
    tokens = torch.arange(1, 1 + 4 * 50).reshape(4, 50)
    maskable = torch.zeros(4, 50, dtype=torch.bool)
    maskable[:, 20:] = True
    t = torch.tensor([1.0, 0.5, 0.25, 1.0])
    noisy, masked = forward_mask(tokens, t, maskable, MASK, g)
    assert masked.dtype == torch.bool and masked.shape == tokens.shape
    assert not bool(masked[:, :20].any())  # non-maskable never masked
    assert bool(masked[0, 20:].all()) and bool(masked[3, 20:].all())  # t = 1: u < 1 always
    assert torch.equal(noisy[masked], torch.full((int(masked.sum()),), MASK))
    assert torch.equal(noisy[~masked], tokens[~masked])


def test_forward_mask_nothing_maskable() -> None:
    g = torch.Generator().manual_seed(1)
    tokens = torch.ones(2, 5, dtype=torch.long)
    noisy, masked = forward_mask(tokens, torch.ones(2), torch.zeros(2, 5, dtype=torch.bool), MASK, g)
    assert not bool(masked.any())
    assert torch.equal(noisy, tokens)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_forward_mask_rate_is_t(t: float) -> None:
    n = 200_000
    g = torch.Generator().manual_seed(123)
    tokens = torch.zeros(4, n // 4, dtype=torch.long)
    _, masked = forward_mask(tokens, torch.full((4,), t), torch.ones_like(tokens, dtype=torch.bool), MASK, g)
    rate = masked.float().mean().item()
    # binomial std of the rate: sqrt(t (1 - t) / n) <= sqrt(0.25 / 2e5) ~ 1.1e-3; allow 5 std
    std = math.sqrt(t * (1 - t) / n)
    assert abs(rate - t) < 5 * std


def test_forward_mask_per_row_rate() -> None:
    n = 100_000
    g = torch.Generator().manual_seed(7)
    t = torch.tensor([0.2, 0.8])
    tokens = torch.zeros(2, n, dtype=torch.long)
    _, masked = forward_mask(tokens, t, torch.ones_like(tokens, dtype=torch.bool), MASK, g)
    rates = masked.float().mean(1)
    # per-row std sqrt(0.2 * 0.8 / 1e5) ~ 1.26e-3; 5 std ~ 6.3e-3
    tol = 5 * math.sqrt(0.2 * 0.8 / n)
    assert abs(rates[0].item() - 0.2) < tol
    assert abs(rates[1].item() - 0.8) < tol


def test_forward_mask_deterministic_and_no_global_rng() -> None:
    tokens = torch.arange(64).reshape(2, 32)
    maskable = torch.ones_like(tokens, dtype=torch.bool)
    t = torch.tensor([0.5, 0.3])
    before = torch.get_rng_state()
    a = forward_mask(tokens, t, maskable, MASK, torch.Generator().manual_seed(5))
    b = forward_mask(tokens, t, maskable, MASK, torch.Generator().manual_seed(5))
    after = torch.get_rng_state()
    assert torch.equal(before, after)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = forward_mask(tokens, t, maskable, MASK, torch.Generator().manual_seed(6))
    assert not torch.equal(a[1], c[1])  # 64 coin flips: equal by chance with negligible probability


# --------------------------------------------------------------------------- sample_t


def test_sample_t_range_shape_determinism() -> None:
    before = torch.get_rng_state()
    t = sample_t(100_000, torch.Generator().manual_seed(0))
    assert torch.equal(before, torch.get_rng_state())
    assert t.shape == (100_000,) and t.dtype == torch.float32
    assert bool((t > 0).all()) and bool((t <= 1).all())
    # U(0, 1]: mean 1/2, std of the mean sqrt(1/12 / 1e5) ~ 9.1e-4; allow 5 std
    assert abs(t.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / 100_000)
    assert torch.equal(t, sample_t(100_000, torch.Generator().manual_seed(0)))


# --------------------------------------------------------------------------- rebuild_state


def test_rebuild_state_by_hand() -> None:
    completion = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    unmask_step = torch.tensor([[0, 2, 1, 3], [3, 0, 0, 1]])
    # before step 0: nothing revealed yet
    assert rebuild_state(completion, unmask_step, 0, MASK).tolist() == [[MASK] * 4, [MASK] * 4]
    # before step 2: tokens revealed at steps 0 and 1 are visible
    assert rebuild_state(completion, unmask_step, 2, MASK).tolist() == [
        [10, MASK, 12, MASK],
        [MASK, 21, 22, 23],
    ]
    # before step 4 (after the last step): everything visible
    assert torch.equal(rebuild_state(completion, unmask_step, 4, MASK), completion)


def test_rebuild_state_per_row_step() -> None:
    completion = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    unmask_step = torch.tensor([[0, 2, 1, 3], [3, 0, 0, 1]])
    # row 0 before step 1 (only step 0 visible); row 1 before step 3 (steps 0..2 visible)
    out = rebuild_state(completion, unmask_step, torch.tensor([1, 3]), MASK)
    assert out.tolist() == [[10, MASK, MASK, MASK], [MASK, 21, 22, 23]]


# --------------------------------------------------------------------------- padding helpers


def test_left_pad_by_hand() -> None:
    ids, mask = left_pad([[5, 6, 7], [8], [1, 2]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 1, 2]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert ids.dtype == torch.long and mask.dtype == torch.long


def test_left_pad_multiple_of() -> None:
    # longest is 3, rounded up to a multiple of 4 -> 4
    ids, mask = left_pad([torch.tensor([5, 6, 7]), torch.tensor([8])], pad_id=9, multiple_of=4)
    assert ids.tolist() == [[9, 5, 6, 7], [9, 9, 9, 8]]
    assert mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    # already a multiple: 4 stays 4
    ids, _ = left_pad([[1, 2, 3, 4]], pad_id=0, multiple_of=4)
    assert ids.tolist() == [[1, 2, 3, 4]]
    # 5 -> 8
    ids, _ = left_pad([[1, 2, 3, 4, 5]], pad_id=0, multiple_of=4)
    assert ids.tolist() == [[0, 0, 0, 1, 2, 3, 4, 5]]


@pytest.mark.parametrize("bad", [[], [[1, 2], []], [[[1, 2]]]])
def test_left_pad_rejects_empty_or_nested(bad: list) -> None:
    with pytest.raises(ValueError, match="non-empty 1D"):
        left_pad(bad, pad_id=0)


def test_positions_from_padding() -> None:
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert positions_from_padding(padding).tolist() == [
        [0, 0, 0, 1, 2],
        [0, 1, 2, 3, 4],
        [0, 0, 0, 0, 0],
    ]
    assert positions_from_padding(padding.bool()).dtype == torch.long


def test_left_pad_then_positions() -> None:
    _, mask = left_pad([[3, 4, 5, 6], [7, 8]], pad_id=0)
    assert positions_from_padding(mask).tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]


# --------------------------------------------------------------------------- block_layout


def test_block_layout_valid() -> None:
    assert block_layout(128, 32, 64) == (4, 16)  # 128/32 = 4 blocks; 64/4 = 16 steps each
    assert block_layout(8, 8, 8) == (1, 8)
    assert block_layout(12, 4, 3) == (3, 1)


def test_block_layout_errors() -> None:
    with pytest.raises(ValueError, match="block_length 5 must divide gen_length 12"):
        block_layout(12, 5, 6)
    # 12 / 4 = 3 blocks; 4 steps is not a multiple of 3
    with pytest.raises(ValueError, match="steps 4 must be a multiple of the number of blocks 3"):
        block_layout(12, 4, 4)
