"""Staircase layout: reproduces the golden fixtures' masks, positions and logits; no leakage; equal to
a loop of separate per-block forward passes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from system.models import load_model
from system.models.base import block_causal_mask
from system.staircase import staircase_inputs, staircase_logits, staircase_mask
from tests.conftest import REAL_FAMILIES, fixture_dir, tiny_model

P, L, BS = 8, 16, 4  # the fixtures' layout: prompt 8 | clean 16 | noisy 16, block 4


@pytest.mark.fixtures
@pytest.mark.parametrize("family", REAL_FAMILIES)
def test_layout_and_logits_equal_the_goldens(family: str) -> None:
    directory = fixture_dir(family)
    golden = load_file(str(directory / "golden.safetensors"))
    ids = golden["staircase_input_ids"]
    prompt, clean, noisy = ids[:, :P], ids[:, P:P + L], ids[:, P + L:]
    prompt_mask = torch.ones_like(prompt)
    attention = "block" if family in ("sdar", "llada2") else "full"
    built_ids, mask, pos = staircase_inputs(prompt, prompt_mask, clean, noisy, BS, attention)
    assert torch.equal(built_ids, ids)
    assert torch.equal(pos, golden["staircase_position_ids"])
    assert torch.equal(mask, golden["staircase_mask"])
    model = load_model(directory, overrides={"block_size": BS} if family == "llada2" else None)
    with torch.no_grad():
        logits = staircase_logits(model, prompt, prompt_mask, clean, noisy, BS, attention)
    expected = golden["logits_staircase"][:, P + L:]
    if model.spec.logits_shift:  # goldens hold the raw (shifted) output; realign as the adapter does
        raw = golden["logits_staircase"]
        expected = torch.cat([raw[:, :1], raw[:, :-1]], dim=1)[:, P + L:]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def _tokens(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(10, 100, shape, generator=gen)


def test_no_leakage_between_blocks() -> None:
    model = tiny_model("block", BS)
    gen = torch.Generator().manual_seed(0)
    prompt, clean = _tokens(gen, 2, P), _tokens(gen, 2, L)
    noisy = torch.where(torch.rand(2, L, generator=gen) < 0.5, model.mask_token_id, clean)
    pm = torch.ones_like(prompt)
    with torch.no_grad():
        base = staircase_logits(model, prompt, pm, clean, noisy)
        for b in range(L // BS):
            # A clean token of block b changes only noisy blocks > b.
            changed = clean.clone()
            changed[:, b * BS] = (changed[:, b * BS] + 1) % 90 + 10
            out = staircase_logits(model, prompt, pm, changed, noisy)
            assert torch.equal(out[:, : (b + 1) * BS], base[:, : (b + 1) * BS])
            if b + 1 < L // BS:
                assert not torch.allclose(out[:, (b + 1) * BS:], base[:, (b + 1) * BS:])
        # A noisy token changes its own block's logits and nothing else (no clean logit either).
        ids, mask, pos = staircase_inputs(prompt, pm, clean, noisy, BS)
        full = model(ids, attention_mask=mask, position_ids=pos)
        changed = noisy.clone()
        changed[:, BS + 1] = model.mask_token_id if bool((noisy[:, BS + 1] != model.mask_token_id).all()) else 50
        ids2, _, _ = staircase_inputs(prompt, pm, clean, changed, BS)
        full2 = model(ids2, attention_mask=mask, position_ids=pos)
        assert torch.equal(full2[:, : P + L], full[:, : P + L])
        noisy_out, noisy_out2 = full[:, P + L:], full2[:, P + L:]
        outside = torch.ones(L, dtype=torch.bool)
        outside[BS: 2 * BS] = False
        assert torch.equal(noisy_out2[:, outside], noisy_out[:, outside])
        assert not torch.allclose(noisy_out2[:, BS: 2 * BS], noisy_out[:, BS: 2 * BS])


@pytest.mark.parametrize("prompt_lengths", [(8, 8), (5, 8)])
def test_one_pass_equals_per_block_loop(prompt_lengths: tuple[int, int]) -> None:
    model = tiny_model("block", BS)
    gen = torch.Generator().manual_seed(1)
    clean = _tokens(gen, 2, L)
    noisy = torch.where(torch.rand(2, L, generator=gen) < 0.5, model.mask_token_id, clean)
    prompt = _tokens(gen, 2, P)
    pm = torch.ones_like(prompt)
    pm[1, : P - prompt_lengths[1]] = 0  # left padding in row 1
    with torch.no_grad():
        one_pass = staircase_logits(model, prompt, pm, clean, noisy)
        for b in range(L // BS):
            # A plain block-causal forward over [prompt | clean blocks < b | noisy block b].
            x = torch.cat([prompt, clean[:, : b * BS], noisy[:, b * BS: (b + 1) * BS]], dim=1)
            real = torch.cat([pm, torch.ones(2, (b + 1) * BS, dtype=torch.long)], dim=1)
            mask = block_causal_mask(x.shape[1], BS) & real.bool()[:, None, None, :]
            mask |= torch.eye(x.shape[1], dtype=torch.bool)[None, None] & ~real.bool()[:, None, :, None]
            pos = (real.cumsum(-1) - 1).clamp(min=0)
            ref = model(x, attention_mask=mask, position_ids=pos)[:, -BS:]
            torch.testing.assert_close(one_pass[:, b * BS: (b + 1) * BS], ref, atol=1e-5, rtol=0)


def test_mask_rules_by_hand() -> None:
    # P = 2 (one pad), L = 4, block 2: positions 0-1 prompt, 2-5 clean (blocks 0,0,1,1), 6-9 noisy.
    m = staircase_mask(torch.tensor([[0, 1]]), 4, 2, "full")[0, 0].int()
    assert m[0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]  # a pad query: real prompt keys + itself
    assert m[1].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]  # prompt: real prompt keys
    assert m[4].tolist() == [0, 1, 1, 1, 1, 1, 0, 0, 0, 0]  # clean block 1: prompt + clean blocks 0-1
    assert m[6].tolist() == [0, 1, 0, 0, 0, 0, 1, 1, 0, 0]  # noisy block 0: prompt + own noisy block
    assert m[9].tolist() == [0, 1, 1, 1, 0, 0, 0, 0, 1, 1]  # noisy block 1: prompt + clean 0 + noisy 1
    with pytest.raises(ValueError, match="multiple of the block size"):
        staircase_mask(torch.ones(1, 2), 5, 2)
