"""Periodic test-split evaluation during RL (``rollout.eval_every``): the rollout workers decode the
test examples greedily with the weights they hold, the reward workers score them, and the numbers are
summarised as ``stabledrl eval`` summarises them (actors/evaluate.py), logged as ``eval/*``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from actors.evaluate import eval_records, summarize
from actors.tasks import load_task_data
from system.config import Config
from system.types import Example

if TYPE_CHECKING:
    from system.driver import Workers


def evaluate_test(cfg: Config, workers: Workers, examples: list[Example]) -> dict[str, float]:
    """Greedy test-split score of the weights the rollout workers hold (``rollout.eval_every``): decoded
    by the rollout workers, scored by the reward workers, summarised as ``stabledrl eval`` does."""
    from system.driver import split  # the driver imports this module

    start = time.monotonic()
    chunks = [c for c in split(examples, workers.rollout.size) if c]
    decoded = [d for part in workers.rollout.map("decode_greedy", chunks) for d in part]
    items = [(ex, text) for ex, (text, _) in zip(examples, decoded, strict=True)]
    results = [r for part in workers.reward.map("score", [c for c in split(items, workers.reward.size) if c])
               for r in part]
    summary = summarize(eval_records(examples, decoded, results))
    keys = ("score", "score_stderr", "accuracy", "completion_length")
    return {**{f"eval/{k}": summary[k] for k in keys}, "timing/eval": time.monotonic() - start}


class PeriodicEval:
    """``rollout.eval_every``: the first ``rollout.eval_limit`` test examples, scored before step 1 (as
    step 0), every n steps and after the last step."""

    def __init__(self, cfg: Config, workers: Workers) -> None:
        self.cfg, self.workers, self.every = cfg, workers, cfg.rollout.eval_every
        self.examples = load_task_data(cfg.data)[1][: cfg.rollout.eval_limit] if self.every else []

    def due(self, step: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == self.cfg.rollout.steps)

    def __call__(self) -> dict[str, float]:
        return evaluate_test(self.cfg, self.workers, self.examples)


