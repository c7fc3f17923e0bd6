"""``RewardWorker``: scores completions in a pool of worker processes, with a time limit per item.

A plain class (no Ray; a Ray actor can wrap it). The parent never scores: it hands one item at a
time to each idle worker process over a pipe and waits on all of them. An item whose worker does
not answer within its time limit (``reward.timeout_s``, plus the sandbox time of code items) gets
score 0 with the reason, and that worker is killed and replaced; a worker that dies while scoring
(a crash in native code, ``os._exit``) likewise. A worker found dead while idle (killed from
outside) is replaced before any item is handed to it, and the run goes on. An exception inside a
reward is caught in the worker and reported with the item. Results come back in input order.

Processes start with ``forkserver`` (default) or ``spawn``, never ``fork``: the parent has torch
and its threads loaded. The forkserver preloads this module (and so the rewards and math-verify),
so a replacement worker starts in a fraction of a second. As with any forkserver / spawn pool, a
script that creates a RewardWorker needs the ``if __name__ == "__main__":`` guard.

``stats()`` counts items, timeouts, errors by kind (``timeout``, ``worker_crash``,
``exception:<Type>``, ``sandbox_error``, ``unknown_task``, ...) and worker restarts.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from actors import rewards
from actors.rewards import RewardContext
from system.config import RewardConfig
from system.types import Example, RewardResult, RolloutGroup

ExtraRewards = dict[tuple[str, str], Callable[[Example, str, RewardContext], RewardResult]]


def _serve(conn: Connection, config: RewardConfig, extra: ExtraRewards) -> None:
    """Worker process: score items from ``conn`` until it closes or sends None."""
    for (task, profile), fn in extra.items():
        rewards.register_reward(task, profile, fn)
    ctx = RewardContext.from_config(config)
    # Warm math-verify up (its first call compiles grammars) outside any item's time; score() never raises.
    rewards.score(Example("math", "warm-up", "", {"answer": "1"}), "<answer>1</answer>", ctx)
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, example, completion = message
        result, kind = rewards.score_with_error(example, completion, ctx)
        try:
            conn.send((index, result, kind))
        except Exception as e:  # e.g. a registered reward returned something that does not pickle
            conn.send((index, RewardResult(0.0, {}, f"reward result not sendable: {e}"), "bad_result"))


@dataclass
class _Slot:
    process: Any
    conn: Connection
    started: float
    ready: bool = False
    item: int | None = None
    deadline: float = 0.0
    budget: float = 0.0


@dataclass
class _Stats:
    items: int = 0
    timeouts: int = 0
    restarts: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    seconds: float = 0.0


class RewardWorker:
    """A pool of reward processes (see the module docstring).

    Args:
        config: the reward section (profile, num_workers, timeout_s, sandbox settings, start_method).
        extra_rewards: (task, profile) -> reward function, registered in every worker process (the
            functions must be importable by name, i.e. defined at a module's top level).
        start_timeout_s: how long a new worker may take to import and report ready.
    """

    def __init__(self, config: RewardConfig | None = None, *, extra_rewards: ExtraRewards | None = None,
                 start_timeout_s: float = 300.0) -> None:
        self.config = config or RewardConfig()
        self.extra = dict(extra_rewards or {})
        self.start_timeout_s = start_timeout_s
        self._ctx = RewardContext.from_config(self.config)  # for time budgets only; never scores here
        self._mp = multiprocessing.get_context(self.config.start_method)
        if self.config.start_method == "forkserver":
            self._mp.set_forkserver_preload(["actors.reward_worker"])
        self._stats = _Stats()
        self._slots: list[_Slot] = []
        self._closed = False
        for _ in range(self.config.num_workers):
            self._slots.append(self._start())

    # ------------------------------------------------------------------ processes

    def _start(self) -> _Slot:
        parent, child = self._mp.Pipe(duplex=True)
        process = self._mp.Process(target=_serve, args=(child, self.config, self.extra), daemon=True,
                                   name="reward-worker")
        process.start()
        child.close()
        return _Slot(process, parent, time.monotonic())

    def _replace(self, i: int) -> None:
        slot = self._slots[i]
        if slot.process.is_alive():
            slot.process.kill()
        slot.process.join(timeout=10)
        slot.conn.close()
        self._stats.restarts += 1
        self._slots[i] = self._start()

    def _fail(self, i: int, results: list, kind: str, reason: str) -> None:
        slot = self._slots[i]
        assert slot.item is not None
        results[slot.item] = RewardResult(0.0, {}, reason)
        self._stats.errors[kind] += 1
        self._stats.timeouts += kind == "timeout"
        self._replace(i)

    @staticmethod
    def _startup_failure(slot: _Slot) -> RuntimeError:
        slot.process.join(timeout=5)
        code = slot.process.exitcode
        if code is not None and code < 0:  # a signal from outside (the OOM killer, kill -9), not a bad import
            return RuntimeError(f"reward worker {slot.process.pid} was killed by signal {-code} while starting, "
                                "before it could score anything; if the OOM killer did it, lower reward.num_workers")
        return RuntimeError(
            f"reward worker {slot.process.pid} exited at start-up (exit code {slot.process.exitcode}); see its "
            "stderr. A script that creates a RewardWorker needs the `if __name__ == '__main__':` guard "
            "(workers start with forkserver / spawn, which import the main module)")

    def _collect(self, i: int, results: list) -> None:
        """Take whatever slot ``i`` has to report: readiness, a result, a crash or a timeout."""
        slot, now = self._slots[i], time.monotonic()
        if slot.conn.poll():
            try:
                message = slot.conn.recv()
            except (EOFError, OSError):
                message = None
            if message is None:
                if not slot.ready:
                    raise self._startup_failure(slot)
                if slot.item is None:
                    self._stats.errors["worker_died_idle"] += 1
                    self._replace(i)
                    return
                slot.process.join(timeout=2)  # the pipe closes a moment before the process is reaped
                code = slot.process.exitcode if slot.process.exitcode is not None else "unknown"
                self._fail(i, results, "worker_crash", f"the reward worker died while scoring this item "
                           f"(exit code {code}); it was replaced")
            elif message[0] == "ready":
                slot.ready = True
            else:
                index, result, kind = message
                results[index] = result
                if kind is not None:
                    self._stats.errors[kind] += 1
                slot.item = None
        elif not slot.process.is_alive():
            if not slot.ready:
                raise self._startup_failure(slot)
            if slot.item is None:  # died while idle (killed from outside): replace it, nothing lost
                self._stats.errors["worker_died_idle"] += 1
                self._replace(i)
                return
            self._fail(i, results, "worker_crash", f"the reward worker died while scoring this item "
                       f"(exit code {slot.process.exitcode}); it was replaced")
        elif slot.item is not None and now > slot.deadline:
            self._fail(i, results, "timeout", f"timed out after {slot.budget:.1f} s; the reward worker was "
                       "killed and replaced")
        elif not slot.ready and now - slot.started > self.start_timeout_s:
            raise RuntimeError(f"reward worker {slot.process.pid} did not start within {self.start_timeout_s} s")

    def _hand_out(self, i: int, queue: collections.deque, items: Sequence[tuple[Example, str]]) -> None:
        """Send the next queued item to idle slot ``i``. A process that died while idle (killed from
        outside) is replaced first and the item stays queued for a live one: a dead worker's pipe
        would raise BrokenPipeError here, and the item has not been tried, so it must not score 0."""
        slot = self._slots[i]
        if slot.process.is_alive():
            index = queue[0]
            example, completion = items[index]
            try:
                slot.conn.send((index, example, completion))
            except (BrokenPipeError, ConnectionResetError, EOFError):
                pass  # it died between the check and the send: replaced below, item still queued
            else:
                queue.popleft()
                slot.budget = self.config.timeout_s + rewards.time_budget(example, self._ctx)
                slot.item, slot.deadline = index, time.monotonic() + slot.budget
                return
        self._stats.errors["worker_died_idle"] += 1
        self._replace(i)

    # ------------------------------------------------------------------ scoring

    def score(self, items: Sequence[tuple[Example, str]]) -> list[RewardResult]:
        """Rewards of (example, completion) pairs, in input order; never raises on a completion."""
        if self._closed:
            raise RuntimeError("RewardWorker is closed")
        start = time.monotonic()
        results: list[RewardResult | None] = [None] * len(items)
        queue = collections.deque(range(len(items)))
        while queue or any(s.item is not None for s in self._slots):
            for i in range(len(self._slots)):
                if queue and self._slots[i].ready and self._slots[i].item is None:
                    self._hand_out(i, queue, items)
            deadlines = [s.deadline for s in self._slots if s.item is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 1.0
            wait([s.conn for s in self._slots] + [s.process.sentinel for s in self._slots], timeout=timeout)
            for i in range(len(self._slots)):
                self._collect(i, results)
        self._stats.items += len(items)
        self._stats.seconds += time.monotonic() - start
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def score_batch(self, examples: Sequence[Example], completions: Sequence[str]) -> list[RewardResult]:
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
        return self.score(list(zip(examples, completions)))

    def score_groups(self, groups: Sequence[RolloutGroup]) -> list[list[RewardResult]]:
        """Score every rollout of every group (all in one pool pass) and write each rollout's
        ``reward``, ``reward_components`` and ``reward_reason``."""
        flat = [(group.example, rollout.completion_text) for group in groups for rollout in group.rollouts]
        results = iter(self.score(flat))
        out = []
        for group in groups:
            scored = []
            for rollout in group.rollouts:
                result = next(results)
                rollout.reward, rollout.reward_reason = result.score, result.reason
                rollout.reward_components = dict(result.components)
                scored.append(result)
            out.append(scored)
        return out

    def score_group(self, group: RolloutGroup) -> list[RewardResult]:
        return self.score_groups([group])[0]

    def stats(self) -> dict[str, Any]:
        """Counts since start: items, timeouts, errors by kind, worker restarts, items per second."""
        s = self._stats
        return {"items": s.items, "timeouts": s.timeouts, "errors": dict(s.errors),
                "errors_total": sum(s.errors.values()), "restarts": s.restarts, "workers": len(self._slots),
                "seconds": round(s.seconds, 3), "items_per_s": round(s.items / s.seconds, 2) if s.seconds else 0.0}

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for slot in self._slots:
            with contextlib.suppress(OSError, ValueError):  # a dead worker's pipe
                slot.conn.send(None)
        for slot in self._slots:
            slot.process.join(timeout=5)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=5)
            slot.conn.close()

    def __enter__(self) -> RewardWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit multiprocessing may be half torn down
            self.close()
