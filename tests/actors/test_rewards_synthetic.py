"""The synthetic copy / add tasks as RL tasks: generated splits, plain prompts, graded reward."""

from __future__ import annotations

import math

from actors.rewards import RewardContext, score
from actors.tasks import load_task_data
from actors.tasks.prompts import user_message
from system.config import load_config
from system.types import Example


def test_reward_by_hand() -> None:
    ex = Example("copy", "1", "copy 0712", {"answer": "0712"})
    assert score(ex, " 0712\n", RewardContext()).score == 1.0
    # "0719": 3 of 4 right (0.6 * 3/4 = 0.45), all digits (0.1), same length (0.1) -> 0.65
    assert math.isclose(score(ex, "0719", RewardContext()).score, 0.65)
    # "ab": 0 right, no digits, length 1 - 2/4 = 0.5 -> 0.05
    assert math.isclose(score(ex, "ab", RewardContext()).score, 0.05)
    # the d1 profile scores the same way
    assert math.isclose(score(ex, "0719", RewardContext(profile="d1")).score, 0.65)


def test_generated_splits_are_disjoint_and_prompts_plain() -> None:
    cfg = load_config(None, ["data.task=add", "data.num_train=200", "data.num_test=20"])
    train, test = load_task_data(cfg.data)
    assert len(train) <= 200 and len(test) == 20
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert user_message(test[0]) == test[0].prompt
    a, b = test[0].prompt.rstrip("=").split("+")
    assert test[0].reference["answer"] == str(int(a) + int(b))
