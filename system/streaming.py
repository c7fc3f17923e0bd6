"""The bookkeeping of ``rollout.mode: stream`` that needs no workers: numbered prompt tickets (so every
prompt drawn is delivered exactly once, across actor deaths and resumes) and the busy / idle accounting
of the stream's lanes (each rollout actor, the learner). system/stream.py drives them.

A ticket is issued when a prompt is handed to an actor and closed when its scored group reaches the
buffer. A ticket is closed once: a second delivery of the same ticket (a call that ran twice after a
re-issue) is dropped. The tickets still open at a checkpoint are saved with it; a resumed run re-issues
them, in ticket order, before drawing new prompts, so the prompts of the stream are the same as those of
the run that was not interrupted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from system.types import Example

if TYPE_CHECKING:
    from system.steps import PromptSampler


@dataclass
class Ticket:
    """One prompt handed to the stream: its sequence number, the example, and when it was issued."""

    seq: int
    example: Example
    issued: float = 0.0

    def group_id(self) -> str:
        """The id of its group: the same whichever actor generates it, and however often."""
        return f"{self.example.task}:{self.example.id}:t{self.seq}"


class PromptStream:
    """Issues the sampler's prompts as numbered tickets and tracks the open ones (module docstring)."""

    def __init__(self, sampler: PromptSampler) -> None:
        self.sampler = sampler
        self.next_seq = 0
        self.open: dict[int, Ticket] = {}
        self.retry: deque[Ticket] = deque()  # restored open tickets, issued again first

    def issue(self, now: float) -> Ticket:
        if self.retry:
            ticket = self.retry.popleft()
            ticket.issued = now
        else:
            ticket = Ticket(self.next_seq, self.sampler.next(1)[0], now)
            self.next_seq += 1
        self.open[ticket.seq] = ticket
        return ticket

    def close(self, seq: int) -> Ticket | None:
        """The ticket ``seq``, now delivered; None when it was delivered already (a duplicate)."""
        return self.open.pop(seq, None)

    def abandon(self) -> None:
        """Forget the open tickets (a rollback restores the stream of its checkpoint instead)."""
        self.open.clear()

    def state(self) -> dict[str, Any]:
        pending = sorted([*self.open.values(), *self.retry], key=lambda t: t.seq)
        return {"next_seq": self.next_seq, "open": [(t.seq, t.example) for t in pending]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.next_seq = int(state["next_seq"])
        self.open = {}
        self.retry = deque(Ticket(int(seq), example) for seq, example in state["open"])


class Occupancy:
    """Busy time of one lane: the union of the intervals in which it has at least one call outstanding.

    ``idle_fraction`` is over the window since the last ``reset`` (a step) or over the whole run. A
    local (in-process) call is busy exactly while it runs; a Ray call from its submission until the
    driver sees it done (a call queued behind another on the same actor overlaps it, so counts once).
    """

    def __init__(self, now: float) -> None:
        self.outstanding = 0
        self.since = now
        self.window_start, self.window_busy = now, 0.0
        self.run_start, self.run_busy = now, 0.0

    def start(self, now: float) -> None:
        if self.outstanding == 0:
            self.since = now
        self.outstanding += 1

    def end(self, now: float) -> None:
        assert self.outstanding > 0, "a call ended that never started"
        self.outstanding -= 1
        if self.outstanding == 0:
            self.window_busy += now - max(self.since, self.window_start)
            self.run_busy += now - self.since

    def idle_fraction(self, now: float, whole_run: bool = False) -> float:
        start, busy = (self.run_start, self.run_busy) if whole_run else (self.window_start, self.window_busy)
        if self.outstanding:
            busy += now - max(self.since, start)
        wall = now - start
        return 0.0 if wall <= 0 else min(1.0, max(0.0, 1.0 - busy / wall))

    def reset(self, now: float) -> None:
        self.window_start, self.window_busy = now, 0.0


def staleness_metrics(lags: list[int], max_staleness: int) -> dict[str, float]:
    """The batch's groups by lag (versions behind the learner): ``stream/lag_k`` counts for k = 0..max
    and their mean."""
    out = {f"stream/lag_{k}": float(sum(lag == k for lag in lags)) for k in range(max_staleness + 1)}
    out["stream/lag_mean"] = sum(lags) / max(1, len(lags))
    return out
