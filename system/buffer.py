"""The rollout buffer between generation and learning: admits a group only if its policy version is
at most ``max_staleness`` behind the learner's, hands out fixed-size batches, and never hands out the
same group twice (group ids), whatever restarts re-issue."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from system.types import RolloutGroup


@dataclass
class BufferStats:
    admitted: int = 0
    dropped_stale: int = 0
    dropped_duplicate: int = 0
    max_lag_admitted: int = 0


@dataclass
class RolloutBuffer:
    max_staleness: int
    groups: deque[RolloutGroup] = field(default_factory=deque)
    seen: set[str] = field(default_factory=set)
    stats: BufferStats = field(default_factory=BufferStats)

    def add(self, groups: list[RolloutGroup], learner_version: int) -> None:
        for group in groups:
            if group.group_id in self.seen:
                self.stats.dropped_duplicate += 1
                continue
            self.seen.add(group.group_id)
            self.groups.append(group)
        self.evict(learner_version)

    def evict(self, learner_version: int) -> None:
        """Drop every queued group that has become too stale for ``learner_version``."""
        fresh = deque(g for g in self.groups if learner_version - g.policy_version <= self.max_staleness)
        self.stats.dropped_stale += len(self.groups) - len(fresh)
        self.groups = fresh

    def take(self, n: int, learner_version: int) -> list[RolloutGroup] | None:
        """``n`` admissible groups (oldest first), or None when fewer are available."""
        self.evict(learner_version)
        if len(self.groups) < n:
            return None
        batch = [self.groups.popleft() for _ in range(n)]
        lags = [learner_version - g.policy_version for g in batch]
        assert all(0 <= lag <= self.max_staleness for lag in lags), lags
        self.stats.admitted += n
        self.stats.max_lag_admitted = max(self.stats.max_lag_admitted, *lags)
        return batch

    def __len__(self) -> int:
        return len(self.groups)
