"""The KL drift probe: zero for the initial policy, the k3 estimate against the exact KL(p || q) of a
perturbed model, a fixed mask and fixed samples per seed, block-attention models, and no global RNG use."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from system.monitoring.probe import build_kl_probe, k3, kl_drift
from tests.conftest import tiny_model

SEQUENCES = [(torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10, 11, 12, 13])),
             (torch.tensor([14, 15]), torch.tensor([16, 17, 18, 19]))]


def perturbed(model: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return other


def test_k3_by_hand() -> None:
    # rho = 1: 0; rho = 2: 2 - 1 - ln 2 = 0.306853; rho = 1/2: 0.5 - 1 + ln 2 = 0.193147
    out = k3(torch.tensor([0.0, math.log(2.0), -math.log(2.0)], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([0.0, 1 - math.log(2), math.log(2) - 0.5], dtype=torch.float64),
                               atol=1e-15, rtol=0)


def test_initial_policy_has_zero_drift_and_global_rng_is_untouched() -> None:
    model = tiny_model()
    state = torch.get_rng_state()
    probe = build_kl_probe(model, SEQUENCES, 0.5, 4, torch.Generator().manual_seed(0))
    assert kl_drift(model, probe) == {"kl/drift": 0.0, "kl/drift_max": 0.0}
    assert torch.equal(torch.get_rng_state(), state)
    for row, (prompt, completion) in zip(probe.rows, SEQUENCES):
        assert row.positions.numel() >= 1
        assert bool((row.positions >= prompt.numel()).all())  # only completion tokens are masked
        assert bool((row.input_ids[row.positions] == model.mask_token_id).all())
        kept = torch.ones(row.input_ids.numel(), dtype=torch.bool)
        kept[row.positions] = False
        assert torch.equal(row.input_ids[kept], torch.cat([prompt, completion])[kept])
        assert row.samples.shape == row.ref_logp.shape == (row.positions.numel(), 4)


def test_mask_and_samples_are_fixed_by_the_seed() -> None:
    model = tiny_model()
    a = build_kl_probe(model, SEQUENCES, 0.5, 4, torch.Generator().manual_seed(3))
    b = build_kl_probe(model, SEQUENCES, 0.5, 4, torch.Generator().manual_seed(3))
    c = build_kl_probe(model, SEQUENCES, 0.5, 4, torch.Generator().manual_seed(4))
    for ra, rb in zip(a.rows, b.rows):
        assert torch.equal(ra.positions, rb.positions) and torch.equal(ra.samples, rb.samples)
    assert any(not torch.equal(ra.samples, rc.samples) for ra, rc in zip(a.rows, c.rows))


def test_drift_estimates_the_exact_kl_of_a_perturbed_model() -> None:
    model = tiny_model()
    probe = build_kl_probe(model, SEQUENCES, 1.0, 4000, torch.Generator().manual_seed(0))
    moved = perturbed(model, 0.05, seed=1)
    drift = kl_drift(moved, probe)
    # exact KL(p || q) = sum_v p_v (log p_v - log q_v), averaged over the same masked positions
    exact, values = [], []
    with torch.no_grad():
        for row in probe.rows:
            p = torch.log_softmax(model(row.input_ids[None])[0, row.positions].double(), -1)
            q = torch.log_softmax(moved(row.input_ids[None])[0, row.positions].double(), -1)
            exact.append((p.exp() * (p - q)).sum(-1))
            values.append(k3(q.gather(1, row.samples) - row.ref_logp).flatten())
    exact_kl = float(torch.cat(exact).mean())
    samples = torch.cat(values)
    stderr = float(samples.std()) / math.sqrt(samples.numel())
    assert exact_kl > 1e-3  # the perturbation moved the policy
    assert drift["kl/drift"] == pytest.approx(float(samples.mean()), rel=1e-12)
    assert abs(drift["kl/drift"] - exact_kl) < 4 * stderr
    assert stderr < 0.05 * exact_kl  # and the check is tight
    assert drift["kl/drift_max"] >= drift["kl/drift"]


def test_drift_grows_with_the_perturbation_and_keeps_training_mode() -> None:
    model = tiny_model()
    probe = build_kl_probe(model, SEQUENCES, 0.5, 16, torch.Generator().manual_seed(0))
    small, large = perturbed(model, 0.02, seed=5), perturbed(model, 0.2, seed=5)
    large.train()
    assert 0.0 < kl_drift(small, probe)["kl/drift"] < kl_drift(large, probe)["kl/drift"]
    assert large.training


def test_block_attention_model() -> None:
    model = tiny_model("block", 4)
    probe = build_kl_probe(model, SEQUENCES, 0.5, 8, torch.Generator().manual_seed(0))
    assert kl_drift(model, probe)["kl/drift"] == 0.0
    assert kl_drift(perturbed(model, 0.05, seed=2), probe)["kl/drift"] > 0.0


def test_bad_probe_inputs() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="at least one sequence"):
        build_kl_probe(model, [], 0.5, 4, torch.Generator())
    with pytest.raises(ValueError, match=r"KL probe sequence 1: .*completion non-empty \(got shapes \[2\], \[0\]\)"):
        build_kl_probe(model, [SEQUENCES[0], (torch.tensor([1, 2]), torch.tensor([], dtype=torch.long))],
                       0.5, 4, torch.Generator())
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\]"):
        build_kl_probe(model, SEQUENCES, 0.0, 4, torch.Generator())
