"""The update as a whole against a case whose answer is known (bench/exact_gradient.py): two completion
tokens, so the decoder's law and the true policy gradient are exact.

- the enumeration is the decoder's law (the sampled reward agrees with the exact expectation);
- with random remasking the per-step (AGRPO) likelihood is the trajectory's exact log-probability, so
  the pipeline's gradient (decoder, rewards, group advantages, estimator, StableDRL loss, backward)
  is unbiased for grad J up to the group baseline's (G - 1) / G: the mean over batches points along
  grad J, and flipping the advantages flips it (the test can fail).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "exact_gradient.py"


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("exact_gradient_bench", BENCH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _args(batches: int) -> argparse.Namespace:
    return argparse.Namespace(batches=batches, group_size=8, lr=3e-3, seed=0)


@pytest.mark.parametrize("remasking", ["random", "low_confidence"])
def test_exact_distribution_is_the_decoders_law(bench, remasking: str) -> None:  # type: ignore[no-untyped-def]
    setting = {"algorithm": {"name": "stabledrl", "estimator": "elbo"}, "remasking": remasking}
    cfg = bench.make_config(setting, _args(1))
    from system.models.build import new_tiny_model

    model, tokenizer = new_tiny_model(cfg.model, 0)
    qs, table = bench.prompts(tokenizer), bench.reward_table(model.spec.vocab_size)
    with torch.no_grad():
        for prompt in qs:
            assert float(bench.exact_distribution(model, prompt, remasking).sum()) == pytest.approx(1.0, abs=1e-9)
        gen = torch.Generator().manual_seed(3)
        completions = torch.cat([bench.rollout_groups(model, cfg, qs, table, gen, b)[1] for b in range(40)])
    check = bench.sampler_check(model, qs, table, completions, 8, remasking)
    assert abs(check["sampler_reward_z"]) < 4.0
    assert check["sampler_tv_first_token"] < 2 * check["sampler_tv_noise"]


def test_pipeline_gradient_follows_the_exact_policy_gradient(bench, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    label = "stabledrl+agrpo(all steps)/random"
    result = bench.measure_setting(label, bench.SETTINGS[label], _args(200))
    # Per batch the signal is weak (cosine about 0.2); 200 batches average it to about 0.94 if unbiased.
    assert result["cosine"] > 0.85, result
    assert 0.6 < result["norm_ratio"] < 1.2, result  # (G - 1) / G = 0.875 times grad J

    import learner.batch as batch

    real = batch.advantages_from_config

    def flipped(rewards, group_ids, cfg):  # type: ignore[no-untyped-def]
        out = real(rewards, group_ids, cfg)
        out.advantages = -out.advantages
        return out

    monkeypatch.setattr(batch, "advantages_from_config", flipped)
    assert bench.measure_setting(label, bench.SETTINGS[label], _args(60))["cosine"] < -0.6
