"""The rollout buffer between generation and learning: admits a group only if its policy version is
at most ``max_staleness`` behind the learner's, hands out fixed-size batches, and never hands out the
same group twice (group ids), whatever restarts re-issue.

A group's version for admission is the *oldest* version that revealed one of its tokens (a stream actor
may swap weights between groups, and a group's tokens may carry per-token versions). Groups whose tokens
span several versions are admitted unless ``mixed_versions`` is off: the learner's default old policy is
its own weights at the start of the step (a proximal policy, as in AReaL's decoupled PPO), so the ratio
never mixes versions; only an estimator that takes the behaviour log-probs recorded at generation time
(AGRPO with ``agrpo_old_logprobs: cached``) would mix them, and the driver turns ``mixed_versions`` off for
it (see system/stream.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from system.types import RolloutGroup


@dataclass
class BufferStats:
    admitted: int = 0
    dropped_stale: int = 0
    dropped_duplicate: int = 0
    max_lag_admitted: int = 0
    dropped_mixed: int = 0
    lag_histogram: list[int] = field(default_factory=list)  # admitted groups by lag 0, 1, ... (versions behind)


def group_version(group: RolloutGroup) -> int:
    """The version admission judges a group by: the oldest that revealed any of its tokens."""
    return min(group.versions())


@dataclass
class RolloutBuffer:
    max_staleness: int
    groups: deque[RolloutGroup] = field(default_factory=deque)
    seen: set[str] = field(default_factory=set)
    stats: BufferStats = field(default_factory=BufferStats)
    mixed_versions: bool = True

    def add(self, groups: list[RolloutGroup], learner_version: int) -> None:
        for group in groups:
            if group.group_id in self.seen:
                self.stats.dropped_duplicate += 1
                continue
            self.seen.add(group.group_id)
            if not self.mixed_versions and len(group.versions()) > 1:
                self.stats.dropped_mixed += 1
                continue
            self.groups.append(group)
        self.evict(learner_version)

    def evict(self, learner_version: int) -> None:
        """Drop every queued group that has become too stale for ``learner_version``."""
        fresh = deque(g for g in self.groups if learner_version - group_version(g) <= self.max_staleness)
        self.stats.dropped_stale += len(self.groups) - len(fresh)
        self.groups = fresh

    def take(self, n: int, learner_version: int) -> list[RolloutGroup] | None:
        """``n`` admissible groups (oldest first), or None when fewer are available."""
        self.evict(learner_version)
        if len(self.groups) < n:
            return None
        batch = [self.groups.popleft() for _ in range(n)]
        lags = [learner_version - group_version(g) for g in batch]
        assert all(0 <= lag <= self.max_staleness for lag in lags), lags
        self.stats.admitted += n
        self.stats.max_lag_admitted = max(self.stats.max_lag_admitted, *lags)
        hist = self.stats.lag_histogram
        hist.extend([0] * (max(lags) + 1 - len(hist)))
        for lag in lags:
            hist[lag] += 1
        return batch

    def state(self) -> dict[str, Any]:
        """The queued groups and the ids seen (for a checkpoint: the stream resumes with them)."""
        return {"groups": list(self.groups), "seen": sorted(self.seen)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.groups, self.seen = deque(state["groups"]), set(state["seen"])

    def __len__(self) -> int:
        return len(self.groups)
