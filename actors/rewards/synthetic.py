"""Rewards of the synthetic ``copy`` / ``add`` tasks (the tiny model's RL playground), identical in both
profiles. 1.0 for the exact answer; otherwise graded partial credit below 0.8, so that even an
untrained policy gets varied scores within a group:

    0.6 * (characters right at their position / longer length)
  + 0.1 * (share of the output's characters that are digits)
  + 0.1 * (1 - |len(output) - len(answer)| / longer length)
"""

from __future__ import annotations

from actors.rewards.context import RewardContext
from system.types import Example, RewardResult


def exact_or_partial(example: Example, completion: str, ctx: RewardContext) -> RewardResult:
    target = str(example.reference.get("answer", ""))
    text = completion.strip()
    if text == target:
        return RewardResult(1.0, {"exact": 1.0, "char_accuracy": 1.0, "digits": 1.0, "length": 1.0},
                            "exact answer", True)
    width = max(len(target), len(text), 1)
    accuracy = sum(a == b for a, b in zip(text, target)) / width
    digits = sum(c.isascii() and c.isdigit() for c in text) / max(len(text), 1)
    length = 1.0 - abs(len(text) - len(target)) / width
    score = 0.6 * accuracy + 0.1 * digits + 0.1 * length
    parts = {"exact": 0.0, "char_accuracy": accuracy, "digits": digits, "length": length}
    return RewardResult(score, parts, f"{accuracy:.0%} of the characters right (expected {target!r})", False)
