"""Diagnostics by hand: ratio statistics, quantile, bypass fraction and gradient share on a built case,
effective sample size (G for equal weights, 1 for one-hot), gradient weights, and the spike detector."""

from __future__ import annotations

import math

import pytest
import torch

from learner.advantages import Groups
from learner.diagnostics import (
    LossTerms,
    SpikeDetector,
    bypass_grad_share,
    bypass_mask,
    gradient_weights,
    group_ess,
    policy_diagnostics,
    quantile,
    ratio_stats,
)
from learner.losses import GRPO, PolicyLossInput, StableDRL
from system.config import AlgorithmConfig


def test_quantile_is_nearest_rank() -> None:
    x = torch.arange(1.0, 101.0)  # 1..100
    assert quantile(x, 0.99) == 99.0  # ceil(0.99 * 100) = 99th smallest
    assert quantile(x, 0.999) == 100.0  # ceil(99.9) = 100
    assert quantile(x, 0.0) == 1.0
    assert math.isnan(quantile(torch.tensor([]), 0.5))


def test_ratio_stats_by_hand() -> None:
    # valid log-ratios [0, ln 2, ln 4] (the 4th entry is masked out): ratios [1, 2, 4]
    # mean 7/3; population std sqrt(((4/3)^2 + (1/3)^2 + (5/3)^2) / 3) = sqrt(42/27) = 1.247219
    # log-ratio mean ln2 = 0.693147; std sqrt((ln2^2 + 0 + ln2^2) / 3) = ln2 sqrt(2/3) = 0.565953
    lr = torch.tensor([0.0, math.log(2), math.log(4), 50.0])
    out = ratio_stats(lr, torch.tensor([True, True, True, False]))
    assert out["ratio_mean"] == pytest.approx(7 / 3)
    assert out["ratio_std"] == pytest.approx(math.sqrt(42 / 27))
    assert (out["ratio_max"], out["ratio_p99"]) == (pytest.approx(4.0), pytest.approx(4.0))
    assert out["log_ratio_mean"] == pytest.approx(math.log(2))
    assert out["log_ratio_std"] == pytest.approx(math.log(2) * math.sqrt(2 / 3))
    # a log-ratio of 500 is reported in float64, not as inf
    assert ratio_stats(torch.tensor([500.0]), torch.tensor([True]))["ratio_max"] == pytest.approx(math.exp(500))


def test_bypass_fraction_on_a_built_case() -> None:
    # eps 0.2, threshold r > 1.2 with A < 0
    #   r:   2    2    1.1  0.5  3 (masked)   A per row: rows 0,1 -> [-1, +1]
    lr = torch.log(torch.tensor([[2.0, 1.1, 3.0], [2.0, 0.5, 3.0]]))
    valid = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([-1.0, 1.0])
    bypass = bypass_mask(lr, adv, valid, 0.2)
    # row 0 (A < 0): r 2 yes, 1.1 no, 3 masked; row 1 (A > 0): none
    assert bypass.tolist() == [[True, False, False], [False, False, False]]
    grad_w = torch.tensor([[3.0, 1.0, 0.0], [2.0, 2.0, 0.0]])
    assert bypass_grad_share(grad_w, bypass) == pytest.approx(3 / 8)
    assert bypass_grad_share(torch.zeros(2, 3), bypass) == 0.0


def test_ess_equal_weights_is_g_one_hot_is_one() -> None:
    groups = Groups.from_ids(torch.tensor([0] * 8 + [1] * 4 + [2] * 3))
    weights = torch.cat([torch.full((8,), 0.3), torch.tensor([0.0, 2.0, 0.0, 0.0]), torch.zeros(3)])
    # group 0: 8 equal weights -> ESS 8; group 1: one-hot -> 1; group 2: all zero -> 0 (no weight at all)
    assert group_ess(weights, groups).tolist() == pytest.approx([8.0, 1.0, 0.0])
    # [1, 3] normalised [0.25, 0.75]: 1 / (0.0625 + 0.5625) = 1.6
    assert group_ess(torch.tensor([1.0, 3.0]), Groups.from_ids(torch.tensor([5, 5]))).item() == pytest.approx(1.6)


def test_stabledrl_ess_from_the_loss() -> None:
    # equal ratios -> w_bar = 1/G -> ESS = G = 4; one ratio e^40 above all others (two-sided clip
    # disabled: bounds none / none) -> w_bar one-hot -> ESS 1, weight_max 1
    for log_ratio, ess in (([0.3] * 4, 4.0), ([40.0, -40.0, -40.0, -40.0], 1.0)):
        new = torch.zeros(4, requires_grad=True)
        out = StableDRL(clip_high=None)(PolicyLossInput(new, -torch.tensor(log_ratio), torch.tensor([1.0, -1, 1, -1]),
                                                        torch.zeros(4, dtype=torch.long)))
        assert out.diagnostics["ess"] == pytest.approx(ess)
        assert out.diagnostics["ess_fraction"] == pytest.approx(ess / 4)
    assert out.diagnostics["weight_max"] == pytest.approx(1.0)


def test_gradient_weights_work_under_no_grad_and_leave_x_alone() -> None:
    x = torch.tensor([1.0, -2.0, 3.0])
    with torch.no_grad():
        w = gradient_weights(lambda v: (v**2).sum() * 0.5 - v[0] * 3, x)  # d/dv: v - [3, 0, 0]
    torch.testing.assert_close(w, torch.tensor([2.0, 2.0, 3.0]))
    assert not x.requires_grad and x.grad is None
    assert gradient_weights(lambda v: torch.tensor(1.0), x).tolist() == [0.0, 0.0, 0.0]  # unused input


def test_policy_diagnostics_by_hand() -> None:
    # one group of 2 sequences: log-ratios [ln 3, 0], A [-1, 1], clipped high only on sample 1 (built)
    groups = Groups.from_ids(torch.tensor([0, 0]))
    terms = LossTerms(log_ratio=torch.tensor([math.log(3), 0.0]), valid=torch.tensor([True, True]),
                      advantages=torch.tensor([-1.0, 1.0]), groups=groups,
                      clipped_low=torch.tensor([False, False]), clipped_high=torch.tensor([False, True]),
                      sample_weights=torch.tensor([0.75, 0.25]), bypass_eps=0.2)
    out = policy_diagnostics(terms, torch.tensor([0.6, 0.2]))
    assert (out["bypass_frac"], out["clip_frac_low"], out["clip_frac_high"]) == (0.5, 0.0, 0.5)
    assert out["bypass_grad_share"] == pytest.approx(0.75)  # 0.6 / (0.6 + 0.2)
    assert out["ess"] == pytest.approx(1 / (0.75**2 + 0.25**2))  # 1.6
    assert (out["weight_max"], out["grad_weight_max"]) == (0.75, pytest.approx(0.6))  # x 1 group


def test_bypass_sample_dominates_grpo_but_not_stabledrl() -> None:
    # one bypass sample (A < 0, r = 1e6) among 7 ordinary ones (r = 1)
    log_ratio = torch.zeros(8)
    log_ratio[0] = math.log(1e6)
    adv = torch.tensor([-1.0, 1, -1, 1, -1, 1, -1, 1])
    shares = {}
    for name, loss in (("grpo", GRPO(level="sequence")), ("stabledrl", StableDRL.two_sided(0.2))):
        new = torch.zeros(8, requires_grad=True)
        shares[name] = loss(PolicyLossInput(new, -log_ratio, adv, torch.zeros(8, dtype=torch.long))).diagnostics
    # GRPO: |dL/dl| = [1e6, 1, ..., 1] / 8 -> share 1e6 / (1e6 + 7) = 0.999993
    assert shares["grpo"]["bypass_grad_share"] == pytest.approx(1e6 / (1e6 + 7), rel=1e-6)
    # StableDRL two-sided: w = [1.2, 1 x 7], sum 8.2 -> share 1.2 / 8.2 = 0.146341
    assert shares["stabledrl"]["bypass_grad_share"] == pytest.approx(1.2 / 8.2, rel=1e-6)
    assert shares["grpo"]["bypass_frac"] == shares["stabledrl"]["bypass_frac"] == 1 / 8


# --------------------------------------------------------------------------- spike detector


def test_spike_detector_against_running_median() -> None:
    det = SpikeDetector(factor=5.0, window=4, min_history=3)
    # the first 3 norms only fill the history
    assert [det.observe(v) for v in (1.0, 2.0, 1.5)] == [False, False, False]
    assert det.median == 1.5
    assert det.observe(7.4) is False  # 7.4 <= 5 * 1.5
    # history [1, 2, 1.5, 7.4] -> median 1.75; 8.76 > 8.75 is a spike
    assert det.observe(8.76) is True
    # window 4: history [2, 1.5, 7.4, 8.76] -> median (2 + 7.4) / 2 = 4.7; 20 <= 23.5
    assert det.observe(20.0) is False
    assert det.observe(float("nan")) is True  # never recorded
    assert det.num_spikes == 2
    restored = SpikeDetector(factor=5.0, window=4, min_history=3)
    restored.load_state_dict(det.state_dict())
    assert (restored.median, restored.num_spikes) == (det.median, 2)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"factor": 1.0}, "spike factor must be > 1"),
    ({"window": 5, "min_history": 6}, "1 <= min_history <= window"),
])
def test_spike_detector_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        SpikeDetector(**kwargs)
    assert message in str(err.value)


def test_spike_detector_from_config() -> None:
    det = SpikeDetector.from_config(AlgorithmConfig(spike_factor=3.0, spike_window=4))
    assert [det.observe(v) for v in (1.0, 1.0, 1.0, 1.0, 3.5)] == [False, False, False, False, True]
