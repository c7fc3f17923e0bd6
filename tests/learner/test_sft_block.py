"""Block SFT (``sft.block_staircase``): the loss by hand with one noise level per block, the staircase
logits it trains on, its loss falling on a small copy task with the tiny block model, and the errors
for a model without block attention."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from learner.sft import SFTBatch, block_staircase_logits, run_sft, sft_loss
from system.config import load_config
from system.staircase import staircase_logits
from tests.conftest import tiny_model


class ConstantLogits(torch.nn.Module):
    """A network whose logits are the same learnable vector at every position."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(vocab))

    def forward(self, input_ids, mask, pos, cache, store):  # type: ignore[no-untyped-def]
        return self.bias.expand(*input_ids.shape, -1)


def test_block_loss_by_hand() -> None:
    # Uniform logits over V tokens: every masked token costs log V; 2 rows of 3 blocks of 4.
    block = tiny_model("block", 4)
    vocab = block.spec.vocab_size
    uniform = type(block)(ConstantLogits(vocab), block.spec)
    completion = torch.arange(30, 54).view(2, 12)
    batch = SFTBatch(torch.tensor([[20, 21, 22], [0, 23, 24]]), torch.tensor([[1, 1, 1], [0, 1, 1]]), completion)
    # Replay the generator: one t per (row, block) = 1 - u in float64 cast to float32, then a uniform per token.
    gen = torch.Generator().manual_seed(0)
    t = (1.0 - torch.rand(6, generator=gen, dtype=torch.float64)).float().view(2, 3)
    masked = torch.rand((6, 4), generator=gen).view(2, 3, 4) < t[..., None]
    assert bool(masked.any())
    # elbo: (1/B) sum_rows (1/L) sum_b (#masked in b) log V / t_b, with B = 2 and L = 12.
    expected = float((masked.sum(-1) * math.log(vocab) / t).sum() / (2 * 12))
    loss, stats = sft_loss(uniform, batch, torch.Generator().manual_seed(0), "elbo", block_staircase=True)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    assert math.isclose(stats["mask_rate"], float(masked.float().mean()), rel_tol=1e-6)
    # mean: every masked token costs log V.
    loss, _ = sft_loss(uniform, batch, torch.Generator().manual_seed(0), "mean", block_staircase=True)
    assert math.isclose(loss.item(), math.log(vocab), rel_tol=1e-5)


def test_block_input_is_the_staircase_of_the_drawn_blocks() -> None:
    model = tiny_model("block", 4)
    prompt, pmask = torch.tensor([[5, 20, 21, 22, 23]]), torch.tensor([[0, 1, 1, 1, 1]])
    target = torch.arange(30, 46)[None]
    state = torch.get_rng_state()
    with torch.no_grad():
        logits, masked, t_token = block_staircase_logits(model, prompt, pmask, target, torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())
    # t is constant inside each block of 4 and masked follows the replayed draw.
    gen = torch.Generator().manual_seed(1)
    t = (1.0 - torch.rand(4, generator=gen, dtype=torch.float64)).float()
    assert torch.equal(t_token, t.repeat_interleave(4)[None])
    assert torch.equal(masked, (torch.rand((4, 4), generator=gen) < t[:, None]).view(1, 16))
    # The logits are those of the staircase layout over the prompt padded to 8 columns (a multiple of 4).
    noisy = torch.where(masked, model.mask_token_id, target)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], 1)
    pad_mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), pmask], 1)
    with torch.no_grad():
        expected = staircase_logits(model, padded, pad_mask, target, noisy)
    assert torch.equal(logits, expected)


def test_block_staircase_needs_a_block_model() -> None:
    batch = SFTBatch(torch.tensor([[20, 21]]), torch.tensor([[1, 1]]), torch.arange(30, 38)[None])
    with pytest.raises(ValueError, match="sft.block_staircase needs a block-diffusion model; model 'tiny' has full "
                                         "attention: set sft.block_staircase: false"):
        sft_loss(tiny_model(), batch, torch.Generator(), block_staircase=True)
    odd = SFTBatch(batch.prompt_ids, batch.prompt_mask, torch.arange(30, 36)[None])
    with pytest.raises(ValueError, match="completion length 6 is not a multiple of the model's block size 4"):
        sft_loss(tiny_model("block", 4), odd, torch.Generator(), block_staircase=True)


def test_block_sft_loss_falls_on_a_copy_task(tmp_path: Path) -> None:
    overrides = {
        "output_dir": str(tmp_path / "run"), "data.task": "copy", "data.num_train": 500, "data.num_test": 8,
        "decoding.gen_length": 8, "decoding.block_length": 4, "decoding.steps": 8,
        "model.tiny.hidden_size": 64, "model.tiny.num_hidden_layers": 2, "model.tiny.intermediate_size": 172,
        "model.tiny.attention": "block", "model.tiny.block_size": 4, "sft.block_staircase": True,
        "sft.steps": 60, "sft.batch_size": 16, "sft.lr": 3e-3, "sft.warmup_steps": 5, "sft.eval_examples": 4,
        "logging.progress": False,
    }
    summary = run_sft(load_config(None, [f"{k}={v}" for k, v in overrides.items()]))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["sft/loss"] for m in metrics]
    assert len(losses) == 60 and all(math.isfinite(v) for v in losses)
    # Average the noisy per-step losses over 10 steps at each end: the end is well below the start.
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, f"loss {first:.3f} -> {last:.3f}"
    assert "test_exact_match" in summary  # the block model decodes its test examples after training
