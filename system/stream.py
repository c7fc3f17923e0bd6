"""``rollout.mode: stream``: the rollout actors generate continuously and each group joins the buffer the
moment it is scored; the learner takes a batch as soon as ``prompts_per_step`` admissible groups are there,
and generation never waits for training.

How it runs. The driver is the stream's one producer of prompts and its one consumer of groups. Every
rollout actor holds up to ``DEPTH`` one-group ``generate`` calls (one running, one queued behind it in its
mailbox, so it never waits on the driver between two groups). A finished call's group is scored by the
reward workers and enters the ``RolloutBuffer``; the learner trains on a batch while the driver keeps
harvesting groups and issuing prompts (``Stream.train``). Back-pressure: no prompt is issued while the
groups in flight plus those buffered reach ``rollout.stream_capacity``, so memory and staleness stay
bounded and an actor that outruns the learner idles (its idle time is measured) instead of piling up
groups that admission would drop; and no prompt is issued whose group would be too stale by the time the
learner reaches it (``Stream.fresh_enough``, AReaL's admission gate). In local mode the same code runs in one process: calls finish when
submitted, so the stream is deterministic (the resume test relies on it); with Ray they overlap.

Weights without stopping the world. A publish goes to the weight transport only; no barrier on the
actors. Each ``generate`` call carries the latest published version as ``min_version``, and the actor
swaps it in before the group (``RolloutWorker.generate``): actors pick up a new version *between groups*.
With ``rollout.stream_swap: block`` each published version is also offered to the actors, which take it
before their running group's next decoding block and record the version of each token
(``Rollout.token_version``; system/stream_swap.py).

Mixed versions, the choice. The learner's old policy is, by default, its own weights at the start of
the step, scored on the batch before any update (learner/learner.py): AReaL's *proximal* policy. The
clipped ratio pi_theta / pi_prox therefore never mixes versions, whatever versions revealed the tokens,
and such groups are admitted (staleness judged by their oldest token). The only estimator that takes the
behaviour log-probs recorded at generation time is AGRPO with ``agrpo_old_logprobs: cached``; there a
ratio over tokens of several versions would mix behaviour policies, so the buffer *refuses* such groups
(``stream/dropped_mixed``) rather than weighting them (no decoupled behaviour weight is applied).

Nothing lost or duplicated. Prompts are numbered tickets (system/streaming.py); a group's id is its
ticket's, whichever actor made it. A killed actor's calls are re-issued by the worker group on the
restarted actor (or a live one), once; a ticket is closed once, so a call that ran twice is dropped.
A checkpoint saves the buffered groups and the open tickets (``stream.pt``); a resumed run re-issues the
open tickets first, then draws new prompts where the sampler stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from system.buffer import RolloutBuffer, group_version
from system.checkpoints import load_stream_state
from system.config import Config
from system.driver import Workers, build_probe
from system.errors import LearnerFailed, RewardFailed
from system.monitoring.names import rollout_metrics as monitored_rollout_metrics
from system.steps import PromptSampler, average, rollout_metrics, score, split
from system.streaming import Occupancy, PromptStream, Ticket, staleness_metrics
from system.transports import WeightTransport
from system.types import RolloutGroup
from system.workers.base import WorkerCallError, WorkerFuture, WorkerGroupError, wait

if TYPE_CHECKING:
    from system.checkpoints import RunState
    from system.monitoring.monitor import CollapseMonitor, MonitorEvent

DEPTH = 2  # generate calls held by one actor: one running, one queued
POLL_S = 0.05  # how long the driver waits for any call before polling again


def needs_behaviour_logprobs(cfg: Config) -> bool:
    """True when the learner's ratio uses the log-probs recorded at generation (see the module docstring)."""
    return cfg.algorithm.estimator == "agrpo" and cfg.algorithm.agrpo_old_logprobs == "cached"


def stream_capacity(cfg: Config) -> int:
    """``rollout.stream_capacity``, or one batch ahead when staleness allows it (none when it is 0)."""
    r = cfg.rollout
    return r.stream_capacity or r.prompts_per_step * (1 + min(1, r.max_staleness))


@dataclass
class InFlight:
    """One ``generate`` call of one ticket on one actor; ``finished``: when the driver saw it done."""

    ticket: Ticket
    worker: int
    future: WorkerFuture
    finished: float | None = None


class Stream:
    """The stream step source of ``system.driver.rl_loop`` (its methods mirror ``driver.Lockstep``)."""

    def __init__(self, cfg: Config, workers: Workers, transport: WeightTransport, sampler: PromptSampler,
                 buffer: RolloutBuffer, published: int = 0) -> None:
        self.cfg, self.workers, self.transport, self.buffer = cfg, workers, transport, buffer
        self.capacity = stream_capacity(cfg)
        self.prompts = PromptStream(sampler)
        buffer.mixed_versions = not needs_behaviour_logprobs(cfg)
        self.inflight: list[InFlight] = []
        self.published = published
        self.actors: list[Occupancy] = []  # the clock starts with the first step (not at start-up)
        self.learner = Occupancy(0.0)
        self.latencies: list[float] = []  # issue -> buffered, per group delivered this step
        self.decode_s: list[float] = []  # the actor's decoding seconds, per group delivered this step
        self.mixed = 0  # groups delivered with tokens of several versions (block swaps), this run
        self.scored = {"items": 0.0, "correct": 0.0, "seconds": 0.0}
        self.step, self.monitor, self.version, self.training = 0, None, published, False

    # ------------------------------------------------------------------ the pump

    def room(self) -> int:
        return self.capacity - len(self.inflight) - len(self.buffer)

    def fresh_enough(self) -> bool:
        """Would a group issued now still be admissible when the learner reaches it (AReaL's gate)? Taken
        in order, it trains after the groups ahead of it, at the learner's version by then; it is
        generated with at least the published version (the actor swaps that in first)."""
        ahead = len(self.inflight) + len(self.buffer)
        reached = self.version + int(self.training) + ahead // self.cfg.rollout.prompts_per_step
        return reached - self.published <= self.cfg.rollout.max_staleness

    def free_worker(self) -> int | None:
        """The actor with the fewest calls outstanding, if it holds fewer than ``DEPTH``."""
        load = [0] * self.workers.rollout.size
        for item in self.inflight:
            if item.finished is None:
                load[item.worker] += 1
        worker = min(range(len(load)), key=lambda i: (load[i], i))
        return worker if load[worker] < DEPTH else None

    def fill(self) -> None:
        """Issue prompts to free actors until the stream is at capacity (back-pressure)."""
        while self.room() > 0 and self.fresh_enough() and (worker := self.free_worker()) is not None:
            now = time.monotonic()
            ticket = self.prompts.issue(now)
            self.actors[worker].start(now)
            future = self.workers.rollout.submit_to(worker, "generate", [ticket.example], transport=self.transport,
                                                    min_version=self.published)
            item = InFlight(ticket, worker, future)
            self.inflight.append(item)
            self.poll([item])

    def poll(self, items: list[InFlight] | None = None) -> None:
        """Stamp the calls seen done (a local call is done when ``submit_to`` returns)."""
        for item in self.inflight if items is None else items:
            if item.finished is None and item.future.done():
                item.finished = time.monotonic()
                self.actors[item.worker].end(item.finished)

    def harvest(self) -> None:
        """Score the finished calls' groups (in issue order) and admit them to the buffer."""
        self.poll()
        done = [item for item in self.inflight if item.finished is not None]
        if not done:
            return
        self.inflight = [item for item in self.inflight if item.finished is None]
        groups = []
        for item in done:
            (group,) = item.future.result()  # a rollout worker's error stops the run, as in lockstep modes
            if self.prompts.close(item.ticket.seq) is None:
                continue  # delivered already: a re-issued call that ran twice
            group.group_id = item.ticket.group_id()
            self.latencies.append(time.monotonic() - item.ticket.issued)
            self.decode_s.append(sum(r.decode_stats.get("seconds", 0.0) for r in group.rollouts))
            self.mixed += int(len(group.versions()) > 1)
            groups.append(group)
        if groups:
            self.buffer.add(self.score_groups(groups), self.version)

    def score_groups(self, groups: list[RolloutGroup]) -> list[RolloutGroup]:
        try:
            metrics = score(self.workers, groups)
        except WorkerGroupError as e:  # a reward worker raised or died: not the learner's failure
            target = self.monitor.rollback_target() if self.monitor is not None else None
            raise RewardFailed(self.step, e, target, self.cfg.output_dir) from e
        items = sum(len(g.rollouts) for g in groups)
        self.scored["items"] += items
        self.scored["correct"] += metrics["rollout/accuracy"] * items
        self.scored["seconds"] += metrics["timing/reward"]
        return groups

    def pump(self) -> None:
        self.fill()
        self.harvest()
        self.fill()  # the harvest made room

    def wait(self, *extra: WorkerFuture) -> None:
        wait([*extra, *(i.future for i in self.inflight if i.finished is None)], timeout=POLL_S)

    def next_batch(self, n: int) -> list[RolloutGroup]:
        """Keep the stream going until the buffer holds ``n`` groups admissible at ``self.version``."""
        while True:
            self.pump()
            batch = self.buffer.take(n, self.version)
            if batch is not None:
                return batch
            self.wait()

    def train(self, batch: list[RolloutGroup]) -> dict[str, float]:
        """The learner's ``train_on`` of the batch, while the stream keeps generating and scoring."""
        self.learner.start(time.monotonic())
        self.training = True
        future = self.workers.learner.map_async("train_on", split(batch, self.workers.learner.size))
        try:
            while not future.done():
                self.pump()
                self.wait(future)
        finally:
            self.learner.end(time.monotonic())
            self.training = False
        metrics = average(future.result())
        self.version += 1  # as the driver's state, once the update is in (a failure leaves it)
        return metrics

    # ------------------------------------------------------------------ the step source

    def learn(self, state: RunState, monitor: CollapseMonitor) -> tuple[dict[str, Any], list[MonitorEvent],
                                                                         list[RolloutGroup]]:
        """One step: wait for a batch, train on it; a non-finite loss becomes the monitor's event."""
        self.step, self.monitor, self.version = state.step, monitor, state.version
        t0 = time.monotonic()
        if not self.actors:
            self.actors, self.learner = [Occupancy(t0) for _ in range(self.workers.rollout.size)], Occupancy(t0)
        batch = self.next_batch(self.cfg.rollout.prompts_per_step)
        waited = time.monotonic() - t0
        build_probe(self.cfg, self.workers, state, batch)
        lags = [state.version - group_version(g) for g in batch]
        metrics: dict[str, Any] = {"step": state.step, **rollout_metrics(batch), **monitored_rollout_metrics(batch),
                                   **staleness_metrics(lags, self.cfg.rollout.max_staleness),
                                   "system/staleness_max": float(max(lags)), "timing/generation": waited}
        try:
            metrics.update(self.train(batch))
        except WorkerCallError as e:
            if "FloatingPointError" in str(e):
                return metrics, [monitor.nonfinite_failure(state.step, str(e))], batch
            raise LearnerFailed(state.step, e, monitor.rollback_target(), self.cfg.output_dir) from e
        except WorkerGroupError as e:  # a learner rank died: the run cannot continue
            raise LearnerFailed(state.step, e, monitor.rollback_target(), self.cfg.output_dir) from e
        metrics["system/groups_admitted"] = float(self.buffer.stats.admitted)
        metrics.update(self.stream_metrics())
        return metrics, monitor.observe(state.step, metrics), batch

    def stream_metrics(self) -> dict[str, float]:
        """Idle fractions (this step and the run so far), group latency, queue and drop counts; then a
        new step window."""
        now, scored, stats = time.monotonic(), self.scored, self.buffer.stats
        actors = [a.idle_fraction(now) for a in self.actors]
        out = {"stream/actor_idle_fraction": sum(actors) / len(actors),
               "stream/learner_idle_fraction": self.learner.idle_fraction(now),
               "stream/actor_idle_fraction_run": sum(a.idle_fraction(now, True) for a in self.actors) / len(actors),
               "stream/learner_idle_fraction_run": self.learner.idle_fraction(now, True),
               "stream/group_latency_mean": sum(self.latencies) / max(1, len(self.latencies)),
               "stream/group_latency_max": max(self.latencies, default=0.0),
               "stream/group_decode_s": sum(self.decode_s) / max(1, len(self.decode_s)),
               "stream/groups_delivered": float(len(self.latencies)), "stream/queued": float(len(self.buffer)),
               "stream/in_flight": float(len(self.inflight)), "stream/dropped_stale": float(stats.dropped_stale),
               "stream/dropped_mixed": float(stats.dropped_mixed), "stream/mixed_groups": float(self.mixed),
               "rollout/accuracy": scored["correct"] / max(1.0, scored["items"]), "timing/reward": scored["seconds"]}
        for lane in (*self.actors, self.learner):
            lane.reset(now)
        self.latencies, self.decode_s, self.scored = [], [], {"items": 0.0, "correct": 0.0, "seconds": 0.0}
        return out

    def publish(self, version: int) -> dict[str, float]:
        """To the transport only: each actor swaps the new weights in before its next group."""
        start = time.monotonic()
        self.workers.learner.call("publish_weights", self.transport, version)
        self.published = version
        if self.cfg.rollout.stream_swap == "block":  # taken before the running groups' next block
            for i in range(self.workers.rollout.size):
                self.workers.rollout.call_async(i, "offer_version", version)
        return {"timing/broadcast": time.monotonic() - start, "system/policy_version": float(version)}

    def advance(self) -> None:
        """Nothing to collect: the stream never stopped."""

    def before_eval(self, version: int) -> None:
        """An evaluation decodes on the rollout workers: they take the published weights first."""
        self.workers.rollout.call("receive_weights", self.transport, self.published)

    def checkpoint_state(self) -> dict[str, Any]:
        """The buffered groups and the open tickets (those in flight are generated again on resume)."""
        self.harvest()
        return {"prompts": self.prompts.state(), "buffer": self.buffer.state()}

    def restore(self, path: Path) -> None:
        """The stream of the checkpoint ``path`` (after ``restore_checkpoint``, which empties the buffer)."""
        saved = load_stream_state(path)
        if saved is not None:
            self.prompts.load_state(saved["prompts"])
            self.buffer.load_state(saved["buffer"])

    def rolled_back(self, path: Path, version: int) -> None:
        """Drop what is in flight (its calls finish unheard) and continue the checkpoint's stream."""
        now = time.monotonic()
        for item in self.inflight:
            if item.finished is None:
                self.actors[item.worker].end(now)
        self.inflight = []
        self.prompts.abandon()
        self.published = self.version = version
        self.restore(path)
