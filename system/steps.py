"""The pieces of one RL step that the lockstep loop (system/driver.py: sync, async) and the stream loop
(system/stream.py) share: the prompt sampler, splitting work over workers, scoring groups with the reward
workers, rollout and sample-table metrics, and the learner ranks' metrics merged into one dict."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import torch

from system.monitoring.names import rollout_metrics as monitored_rollout_metrics
from system.types import Example, RolloutGroup

if TYPE_CHECKING:
    from system.driver import Workers


class PromptSampler:
    """Cycles through the training examples in a seeded random order (an epoch at a time)."""

    def __init__(self, examples: list[Example], seed: int) -> None:
        if not examples:
            raise ValueError("the training split is empty: check data.train_path / data.num_train")
        self.examples, self.rng, self.order, self.cursor = examples, random.Random(seed), [], 0

    def next(self, n: int) -> list[Example]:
        out = []
        while len(out) < n:
            if self.cursor >= len(self.order):
                self.order, self.cursor = list(range(len(self.examples))), 0
                self.rng.shuffle(self.order)
            out.append(self.examples[self.order[self.cursor]])
            self.cursor += 1
        return out

    def state(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "order": self.order, "cursor": self.cursor}

    def load_state(self, state: dict[str, Any]) -> None:
        rng = state["rng"]
        self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        self.order, self.cursor = list(state["order"]), int(state["cursor"])


def split(items: list[Any], n: int) -> list[list[Any]]:
    """``n`` contiguous, nearly equal chunks (earlier chunks one longer)."""
    size, extra = divmod(len(items), n)
    out, lo = [], 0
    for i in range(n):
        hi = lo + size + (1 if i < extra else 0)
        out.append(items[lo:hi])
        lo = hi
    return out


def score(workers: Workers, groups: list[RolloutGroup]) -> dict[str, float]:
    """Fill each rollout's reward from the reward workers; returns reward timing and counts."""
    start = time.monotonic()
    items = [(g.example, r.completion_text) for g in groups for r in g.rollouts]
    chunks = split(items, workers.reward.size)
    results = [res for chunk in workers.reward.map("score", [c for c in chunks if c]) for res in chunk]
    rollouts = [r for g in groups for r in g.rollouts]
    for rollout, result in zip(rollouts, results, strict=True):
        rollout.reward = result.score
        rollout.reward_components = dict(result.components)
        rollout.reward_reason = result.reason
    correct = sum(bool(res.correct) for res in results)
    return {"timing/reward": time.monotonic() - start, "rollout/accuracy": correct / max(1, len(results)),
            **monitored_rollout_metrics(groups)}


def rollout_metrics(groups: list[RolloutGroup]) -> dict[str, float]:
    """Statistics of scored groups: reward, length, zero-variance groups."""
    lengths = [r.decode_stats.get("length", 0.0) for g in groups for r in g.rollouts]
    rewards = torch.tensor([r.reward for g in groups for r in g.rollouts], dtype=torch.float64)
    flat = sum(bool((g.rewards == g.rewards[0]).all()) for g in groups)
    return {"rollout/completion_length": sum(lengths) / max(1, len(lengths)), "rollout/groups": float(len(groups)),
            "rollout/reward_mean": float(rewards.mean()), "rollout/reward_std": float(rewards.std(unbiased=False)),
            "rollout/zero_std_group_fraction": flat / max(1, len(groups))}


def samples(groups: list[RolloutGroup]) -> list[dict[str, Any]]:
    """One row per completion for the sample table (logged sparsely, ``logging.table_every``)."""
    return [{"group": g.group_id, "prompt": g.example.prompt, "completion": r.completion_text,
             "reward": r.reward, "reason": r.reward_reason} for g in groups for r in g.rollouts]


# Learner metrics that are not means: extremes take the largest rank's value, counts add up.
RANK_MAX = ("loss/ratio_max", "loss/ratio_p99", "loss/weight_max", "loss/grad_weight_max", "grad/pre_clip_norm",
            "timing/learner")
RANK_SUM = ("grad/spikes",)


def average(results: list[dict[str, float]]) -> dict[str, float]:
    """One metrics dict from the learner ranks' dicts: the mean over ranks, except the maxima of
    ``RANK_MAX`` (a ratio blow-up on one rank stays visible) and the sums of ``RANK_SUM``."""
    keys = set().union(*results)
    out = {}
    for k in keys:
        values = [r[k] for r in results if k in r]
        out[k] = max(values) if k in RANK_MAX else sum(values) if k in RANK_SUM else sum(values) / len(results)
    return out
