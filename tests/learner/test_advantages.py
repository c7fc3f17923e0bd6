"""Advantages by hand (mean-centred, std-scaled, leave-one-out, zero-variance groups counted and dropped)
and the vectorised group operations against naive loops over groups."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from learner.advantages import Groups, advantages_from_config, compute_advantages
from system.config import AlgorithmConfig

# two groups, ids 9 and 2 interleaved: group 9 = rewards [1, 0, 0, 1] (i = 0, 2, 3, 5), group 2 = [3, 0]
REWARDS = torch.tensor([1.0, 3.0, 0.0, 0.0, 0.0, 1.0])
GIDS = torch.tensor([9, 2, 9, 9, 2, 9])


def test_mean_centred_by_hand() -> None:
    # group 9: mean 0.5 -> [0.5, -0.5, -0.5, 0.5]; group 2: mean 1.5 -> [1.5, -1.5]
    out = compute_advantages(REWARDS, GIDS)
    torch.testing.assert_close(out.advantages, torch.tensor([0.5, 1.5, -0.5, -0.5, -1.5, 0.5]))
    assert (out.num_groups, out.num_zero_variance) == (2, 0)
    assert out.keep.all()


def test_std_scaled_by_hand() -> None:
    # unbiased std: group 9: sqrt((4 * 0.25) / 3) = 0.577350; group 2: sqrt((2.25 + 2.25) / 1) = 2.121320
    # A = centred / (std + 1e-4): 0.5 / 0.577450 = 0.865876; 1.5 / 2.121420 = 0.707074
    out = compute_advantages(REWARDS, GIDS, std_normalize=True)
    a9, a2 = 0.5 / (math.sqrt(1 / 3) + 1e-4), 1.5 / (math.sqrt(4.5) + 1e-4)
    torch.testing.assert_close(out.advantages, torch.tensor([a9, a2, -a9, -a9, -a2, a9]))
    assert a9 == pytest.approx(0.865876, abs=1e-6) and a2 == pytest.approx(0.707074, abs=1e-6)


def test_leave_one_out_by_hand() -> None:
    # A_i = r_i - mean of the others. group 9, i = 0: 1 - (0 + 0 + 1)/3 = 2/3; i = 2: 0 - (1 + 0 + 1)/3 = -2/3
    # group 2: i = 1: 3 - 0 = 3; i = 4: 0 - 3 = -3
    out = compute_advantages(REWARDS, GIDS, leave_one_out=True)
    torch.testing.assert_close(out.advantages, torch.tensor([2 / 3, 3.0, -2 / 3, -2 / 3, -3.0, 2 / 3]))


def test_zero_variance_groups_counted_and_dropped() -> None:
    # group 4: all 1 -> zero variance; group 8: all 0 -> zero variance; group 1: [0, 2] -> [-1, 1]
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0, 0.0])
    gids = torch.tensor([4, 1, 4, 8, 1, 8])
    kept = compute_advantages(rewards, gids, std_normalize=True)
    assert (kept.num_groups, kept.num_zero_variance) == (3, 2)
    assert kept.zero_variance_fraction == pytest.approx(2 / 3)
    assert kept.keep.all()
    dropped = compute_advantages(rewards, gids, drop_zero_variance=True)
    assert dropped.keep.tolist() == [False, True, False, False, True, False]
    assert dropped.num_zero_variance == 2
    torch.testing.assert_close(dropped.advantages, torch.tensor([0.0, -1.0, 0.0, 0.0, 1.0, 0.0]))
    # std scaling of an exactly-equal group gives exactly 0 (not rounding noise / 1e-4)
    third = compute_advantages(torch.full((3,), 0.1), torch.zeros(3, dtype=torch.long), std_normalize=True)
    assert third.advantages.tolist() == [0.0, 0.0, 0.0]


def test_from_config() -> None:
    cfg = AlgorithmConfig(leave_one_out=True, drop_zero_variance_groups=True, std_normalize=False)
    out = advantages_from_config(torch.tensor([1.0, 0.0, 5.0, 5.0]), torch.tensor([0, 0, 1, 1]), cfg)
    torch.testing.assert_close(out.advantages, torch.tensor([1.0, -1.0, 0.0, 0.0]))  # 1 - 0, 0 - 1
    assert out.keep.tolist() == [True, True, False, False]


@pytest.mark.parametrize(
    ("rewards", "gids", "options", "message"),
    [
        (torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]), {}, "rewards[1] = nan is not finite"),
        (torch.ones(2, 2), torch.tensor([0, 0]), {}, "rewards must be a 1-D tensor"),
        (torch.ones(3), torch.tensor([0, 0]), {}, "group_ids has 2 entries but the batch has 3"),
        (torch.ones(2), torch.tensor([0.0, 0.0]), {}, "group_ids must be an integer tensor"),
        (torch.ones(3), torch.tensor([0, 0, 7]), {"leave_one_out": True}, "groups [7] have one"),
    ],
)
def test_bad_inputs_are_named(rewards: torch.Tensor, gids: torch.Tensor, options: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        compute_advantages(rewards, gids, **options)
    assert message in str(err.value)


# --------------------------------------------------------------------------- vectorised vs naive


def _random(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gids = torch.tensor([13, 500, 2, 77, 41, 8])[torch.randint(0, 6, (40,), generator=g)]
    rewards = torch.randint(0, 3, (40,), generator=g).float()
    rewards[gids == 77] = 1.0  # one zero-variance group (when present)
    return rewards, gids


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("std_normalize", "leave_one_out"), [(False, False), (True, False), (False, True),
                                                              (True, True)])
def test_advantages_equal_a_loop_over_groups(seed: int, std_normalize: bool, leave_one_out: bool) -> None:
    rewards, gids = _random(seed)
    expected = [0.0] * len(rewards)
    zero = 0
    for gid in sorted(set(gids.tolist())):
        idx = [i for i in range(len(gids)) if gids[i] == gid]
        vals = [rewards[i].item() for i in idx]
        if len(set(vals)) == 1:
            zero += 1
            continue
        std = statistics.stdev(vals)
        for i, r in zip(idx, vals):
            centre = (sum(vals) - r) / (len(vals) - 1) if leave_one_out else statistics.fmean(vals)
            expected[i] = (r - centre) / ((std + 1e-4) if std_normalize else 1.0)
    out = compute_advantages(rewards, gids, std_normalize=std_normalize, leave_one_out=leave_one_out)
    torch.testing.assert_close(out.advantages, torch.tensor(expected), atol=1e-6, rtol=1e-6)
    assert out.num_zero_variance == zero


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_ops_equal_loops(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    gids = torch.randint(0, 1000, (7,), generator=g)[torch.randint(0, 7, (50,), generator=g)]
    x = torch.randn(50, generator=g, dtype=torch.float64) * 30  # large logits: softmax must be shifted
    groups = Groups.from_ids(gids)
    ids = sorted(set(gids.tolist()))
    assert groups.ids.tolist() == ids and groups.num_groups == len(ids)
    for k, gid in enumerate(ids):
        members = [i for i in range(50) if gids[i] == gid]
        vals = [x[i].item() for i in members]
        assert groups.sizes[k].item() == len(members)
        assert groups.sum(x)[k].item() == pytest.approx(sum(vals), abs=1e-9)
        assert groups.mean(x)[k].item() == pytest.approx(statistics.fmean(vals), abs=1e-9)
        assert (groups.max(x)[k].item(), groups.min(x)[k].item()) == (max(vals), min(vals))
        top = max(vals)
        z = sum(math.exp(v - top) for v in vals)
        soft = groups.softmax(x)
        for i, v in zip(members, vals):
            assert soft[i].item() == pytest.approx(math.exp(v - top) / z, abs=1e-12)
            assert groups.index[i].item() == k


def test_softmax_of_extreme_logits() -> None:
    # log-weights of 1e3 and -1e3 (ratios e^1000 and e^-1000): no overflow, no 0/0
    groups = Groups.from_ids(torch.tensor([0, 0, 1, 1]))
    out = groups.softmax(torch.tensor([1000.0, 0.0, -1000.0, -1000.0]))
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0, 0.5, 0.5]))
