"""The RL driver: owns the loop, the rollout buffer, checkpoints and metrics. Workers (rollout, reward,
learner) are plain classes run through worker groups, in this process (``cluster.mode: local``) or as
Ray actors (``ray``); the loop reads the same either way:

    groups  = rollout.generate(prompts)            # version-stamped, with trajectories
    scores  = reward.score(groups)                 # untrusted text -> RewardResult
    batch   = buffer.take(prompts_per_step)        # staleness-bounded admission
    metrics = learner.train_on(batch)              # mu updates from estimated ratios
    version = publish(learner weights -> actors)   # atomic swap on the actors

``sync`` mode generates each step's rollouts with the latest weights (staleness 0); ``async`` mode
starts generating step n+1 before learning on step n, bounded by ``rollout.max_staleness``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from actors.reward_worker import RewardWorker
from actors.rollout_worker import RolloutWorker
from actors.tasks import load_task_data
from learner.learner import Learner
from system.buffer import RolloutBuffer
from system.checkpoints import RunState, check_resume, restore_checkpoint, save_checkpoint, step_dir
from system.config import Config, dump_config
from system.errors import CheckpointError, ConfigError, LearnerFailed, RewardFailed
from system.malloc import tune_malloc
from system.monitoring.logger import RunLogger
from system.monitoring.monitor import CollapseMonitor, MonitorEvent, strongest
from system.periodic_eval import PeriodicEval
from system.progress import Progress
from system.rollout_io import dump_groups, load_groups
from system.steps import PromptSampler, average, rollout_metrics, samples, score, split
from system.transports import TransportOptions, WeightTransport, build_transport
from system.types import Example, RolloutGroup
from system.workers import WorkerGroup, make_worker_group
from system.workers.base import WorkerCallError, WorkerGroupError

if TYPE_CHECKING:
    from system.stream import Stream

__all__ = ["LearnerFailed", "PromptSampler", "RewardFailed", "RunStopped", "average", "split", "train"]


@dataclass
class Workers:
    rollout: WorkerGroup
    reward: WorkerGroup
    learner: WorkerGroup

    def shutdown(self) -> None:
        for group in (self.rollout, self.reward, self.learner):
            group.shutdown()


@dataclass
class NoWorkers:
    """Stands for a role a debug mode does not start: any call to it is a bug in the driver."""

    role: str
    size: int = 0

    def restarts(self) -> int:
        return 0

    def shutdown(self) -> None:
        pass


def build_workers(cfg: Config) -> Workers:
    c, mode = cfg.cluster, cfg.rollout.debug_mode
    ranks = c.num_learner_ranks
    threads = 2 if cfg.rollout.mode == "stream" and cfg.rollout.stream_swap == "block" else 1  # offers meet generate
    rollout = (NoWorkers("rollout") if mode == "train_only" else
               make_worker_group("rollout", RolloutWorker, cfg.rollout.num_actors, c, cfg, index_kwarg="worker_index",
                                 max_concurrency=threads))
    reward = (NoWorkers("reward") if mode == "train_only" else
              make_worker_group("reward", RewardWorker, cfg.reward.num_workers if c.mode == "ray" else 1, c,
                                cfg.reward))
    learner = (NoWorkers("learner") if mode == "rollout_only" else
               make_worker_group("learner", Learner, ranks, c, cfg, distributed=True))
    return Workers(rollout=rollout, reward=reward, learner=learner)  # type: ignore[arg-type]


def generate(workers: Workers, examples: list[Example], transport: WeightTransport | None = None,
             version: int = 0) -> list[RolloutGroup]:
    """Groups for ``examples`` from the rollout workers; a worker restarted mid-run catches up to
    ``version`` through the transport before generating (its re-issued work is not stale)."""
    chunks = [c for c in split(examples, workers.rollout.size) if c]
    kwargs = {} if transport is None or version == 0 else {"transport": transport, "min_version": version}
    return [g for part in workers.rollout.map("generate", chunks, **kwargs) for g in part]


def build_weight_transport(cfg: Config) -> WeightTransport:
    kind = cfg.rollout.weight_transport
    if kind == "auto":
        kind = "inprocess" if cfg.cluster.mode == "local" else "ray"
    if kind == "inprocess" and cfg.cluster.mode == "ray":
        raise ConfigError("rollout.weight_transport 'inprocess' cannot reach Ray actors; use ray or filesystem")
    options = TransportOptions(kind=kind, directory=cfg.rollout.weight_dir,
                               ray_actor_name=f"stabledrl-weights-{os.getpid()}")
    return build_transport(options, rank=0)


def publish(workers: Workers, transport: WeightTransport, version: int) -> dict[str, float]:
    """Learner ranks publish ``version``; every rollout worker swaps it in before its next batch."""
    start = time.monotonic()
    workers.learner.call("publish_weights", transport, version)
    workers.rollout.call("receive_weights", transport, version)
    return {"timing/broadcast": time.monotonic() - start, "system/policy_version": float(version)}


def resume_from(workers: Workers, transport: WeightTransport, sampler: PromptSampler, buffer: RolloutBuffer,
                path: Path, saved: dict[str, Any] | None = None, publish_as: int | None = None) -> RunState:
    """Restore a run checkpoint and publish the restored policy to the rollout workers, as the
    checkpoint's version or as ``publish_as`` (a rollback: published versions only ever increase)."""
    state = restore_checkpoint(workers, sampler, buffer, path, saved)
    if publish_as is not None:
        state.version = publish_as
    publish(workers, transport, state.version)  # the rollout workers start from the restored policy
    return state


def rl_step(cfg: Config, workers: Workers, buffer: RolloutBuffer, state: RunState,
            groups: list[RolloutGroup], sampler: PromptSampler, metrics: dict[str, Any]) -> Any:
    """Admit scored groups, learn on one batch; in async mode also start generating the next one.
    Fills ``metrics`` (a learner failure leaves the rollout metrics in it); returns the pending
    generation (or None)."""
    buffer.add(groups, state.version)
    batch = buffer.take(cfg.rollout.prompts_per_step, state.version)
    if batch is None:
        raise RuntimeError(f"step {state.step}: the buffer holds {len(buffer)} admissible groups, "
                           f"fewer than rollout.prompts_per_step={cfg.rollout.prompts_per_step}")
    pending = None
    if cfg.rollout.mode == "async" and state.step < cfg.rollout.steps and cfg.rollout.max_staleness >= 1:
        pending = workers.rollout.map_async("generate", [c for c in split(
            sampler.next(cfg.rollout.prompts_per_step), workers.rollout.size) if c])
    metrics.update(average(workers.learner.map("train_on", split(batch, workers.learner.size))))
    metrics["system/staleness_max"] = float(max(state.version - g.policy_version for g in batch))
    metrics["system/groups_admitted"] = float(buffer.stats.admitted)
    return pending


def debug_loop(cfg: Config, run: Path, workers: Workers, log: RunLogger) -> dict[str, Any]:
    """``rollout_only``: generate, score and dump each step's groups. ``train_only``: learn from a dump,
    ``rollout.prompts_per_step`` groups a step, in file order."""
    dump = Path(cfg.rollout.dump_path or run / "rollouts.jsonl")
    n, steps = cfg.rollout.prompts_per_step, 0
    if cfg.rollout.debug_mode == "rollout_only":
        sampler = PromptSampler(load_task_data(cfg.data)[0], cfg.seed)
        for steps in range(1, cfg.rollout.steps + 1):
            groups = generate(workers, sampler.next(n))
            metrics = {"step": steps, **score(workers, groups), **rollout_metrics(groups)}
            dump_groups(dump, groups)
            log.log(steps, metrics)
        return {"steps": steps, "dump": str(dump)}
    replay = load_groups(dump)
    for steps in range(1, cfg.rollout.steps + 1):
        batch = [g for _, g in zip(range(n), replay)]
        if len(batch) < n:
            steps -= 1
            break
        metrics = {"step": steps, **average(workers.learner.map("train_on", split(batch, workers.learner.size)))}
        log.log(steps, metrics)
    workers.learner.call_one(0, "save_policy", str(run / "final"))
    return {"steps": steps, "dump": str(dump), "checkpoint": str(run / "final")}


class RunStopped(RuntimeError):
    """The collapse monitor stopped the run; the message names the detector and the last checkpoint."""


def learn(cfg: Config, workers: Workers, buffer: RolloutBuffer, state: RunState, groups: list[RolloutGroup],
          sampler: PromptSampler, monitor: CollapseMonitor) -> tuple[dict[str, Any], Any, list[MonitorEvent]]:
    """``rl_step`` plus the monitor's verdict; a non-finite loss in the learner becomes an event (the
    step's rollout metrics are kept: an ``alert`` run logs the step and goes on)."""
    metrics: dict[str, Any] = {"step": state.step}
    try:
        metrics.update({**score(workers, groups), **rollout_metrics(groups)})
    except WorkerGroupError as e:  # a reward worker raised or died: not the learner's failure
        raise RewardFailed(state.step, e, monitor.rollback_target(), cfg.output_dir) from e
    try:
        future = rl_step(cfg, workers, buffer, state, groups, sampler, metrics)
    except WorkerCallError as e:
        if "FloatingPointError" in str(e):
            return metrics, None, [monitor.nonfinite_failure(state.step, str(e))]
        raise LearnerFailed(state.step, e, monitor.rollback_target(), cfg.output_dir) from e
    except WorkerGroupError as e:  # a learner rank died: the run cannot continue
        raise LearnerFailed(state.step, e, monitor.rollback_target(), cfg.output_dir) from e
    return metrics, future, monitor.observe(state.step, metrics)


def checkpoint(workers: Workers, state: RunState, sampler: PromptSampler, buffer: RolloutBuffer,
               monitor: CollapseMonitor, run: Path, source: Lockstep | Stream) -> None:
    save_checkpoint(workers, state, sampler, buffer, step_dir(run, state.step), source.checkpoint_state())
    monitor.checkpoint_saved(state.step)


def roll_back(workers: Workers, transport: WeightTransport, sampler: PromptSampler, buffer: RolloutBuffer,
              monitor: CollapseMonitor, run: Path, event: MonitorEvent, version: int) -> RunState:
    """Restore the checkpoint the event names, scale the learning rate, continue from there."""
    state = resume_from(workers, transport, sampler, buffer, step_dir(run, event.rollback_to), publish_as=version + 1)
    workers.learner.call("scale_lr", event.lr_scale or 1.0)
    monitor.rolled_back(state.step)
    return state


def check_start(cfg: Config) -> None:
    """What would fail in a worker or at step 1, refused before any worker starts. The model path is
    checked here only where it names a path on this machine (local mode, or a Ray cluster this process
    starts); on a joined cluster the rollout worker's own error reaches the CLI instead."""
    on_this_machine = cfg.cluster.mode == "local" or not (cfg.cluster.address or os.environ.get("RAY_ADDRESS"))
    if cfg.model.path is not None and on_this_machine and not Path(cfg.model.path).is_dir():
        raise CheckpointError(f"model path {cfg.model.path} does not exist: set model.path to a local checkpoint "
                              "directory (or leave it unset for the built-in tiny model)")
    if (cfg.model.dtype == "float16" and torch.device(cfg.model.device).type == "cpu"
            and cfg.rollout.debug_mode != "rollout_only"):
        raise ConfigError("model.dtype=float16 on model.device=cpu: the learner cannot reduce float16 "
                          "gradients on the CPU; set model.dtype to auto or float32 (or use a GPU)")


def open_run(cfg: Config, run: Path) -> RunLogger:
    """The run directory's config.yaml and metrics.jsonl: written only once the start has succeeded
    (workers built, a resumed checkpoint restored), so a failed start leaves an existing run as it was."""
    log = RunLogger(cfg, run)  # first: a wandb init that fails has not appended to metrics.jsonl yet
    dump_config(cfg, run / "config.yaml")
    return log


def train(cfg: Config, run_dir: str | Path | None = None, resume: str | Path | None = None) -> dict[str, Any]:
    """Run RL steps up to ``rollout.steps`` (continuing a checkpoint with ``resume``); returns a summary.
    The config and the resumed checkpoint are checked before any worker starts."""
    tune_malloc()  # this process's local workers (system/malloc.py); Ray actors tune their own
    run = Path(run_dir or cfg.output_dir)
    check_start(cfg)
    saved = check_resume(Path(resume), cfg.rollout.steps) if resume else None
    workers = build_workers(cfg)
    try:
        if cfg.rollout.debug_mode != "none":
            with open_run(cfg, run) as log:
                return debug_loop(cfg, run, workers, log)
        return rl_loop(cfg, run, workers, Path(resume) if resume else None, saved)
    finally:
        workers.shutdown()


class Lockstep:
    """The ``sync`` / ``async`` step source: each step's groups come from all rollout workers together
    (async: the next step's are generated while the learner trains on these). The stream source
    (system/stream.py) has the same methods; ``rl_loop`` reads the same with either."""

    def __init__(self, cfg: Config, workers: Workers, transport: WeightTransport, sampler: PromptSampler,
                 buffer: RolloutBuffer) -> None:
        self.cfg, self.workers, self.transport, self.sampler, self.buffer = cfg, workers, transport, sampler, buffer
        self.pending: list[RolloutGroup] | None = None
        self.future: Any = None

    def learn(self, state: RunState, monitor: CollapseMonitor) -> tuple[dict[str, Any], list[MonitorEvent],
                                                                         list[RolloutGroup]]:
        t0 = time.monotonic()
        groups = self.pending if self.pending is not None else generate(
            self.workers, self.sampler.next(self.cfg.rollout.prompts_per_step), self.transport, state.version)
        t_gen = time.monotonic() - t0
        build_probe(self.cfg, self.workers, state, groups)
        metrics, self.future, events = learn(self.cfg, self.workers, self.buffer, state, groups, self.sampler,
                                             monitor)
        return {**metrics, "timing/generation": t_gen}, events, groups

    def publish(self, version: int) -> dict[str, float]:
        return publish(self.workers, self.transport, version)

    def advance(self) -> None:
        """After the step's publish: the next step's groups (async) are those generated meanwhile."""
        self.pending = None if self.future is None else [g for part in self.future.result() for g in part]

    def rolled_back(self, path: Path, version: int) -> None:
        self.pending, self.future = None, None

    def before_eval(self, version: int) -> None:
        """The rollout workers already hold the published weights (``publish`` swaps them in)."""

    def checkpoint_state(self) -> dict[str, Any] | None:
        return None


def build_probe(cfg: Config, workers: Workers, state: RunState, groups: list[RolloutGroup]) -> None:
    """At step 1, fix the KL-drift probe set from the first groups (the policy before any update)."""
    if state.step == 1 and cfg.logging.kl_probe_size:
        rollouts = [r for g in groups for r in g.rollouts][: cfg.logging.kl_probe_size]
        workers.learner.call("build_probe", [(r.prompt_ids, r.completion_ids) for r in rollouts])


def build_source(cfg: Config, workers: Workers, transport: WeightTransport, sampler: PromptSampler,
                 buffer: RolloutBuffer, resume: Path | None, version: int) -> Lockstep | Stream:
    if cfg.rollout.mode != "stream":
        return Lockstep(cfg, workers, transport, sampler, buffer)
    from system.stream import Stream  # it imports this module

    source = Stream(cfg, workers, transport, sampler, buffer, published=version)
    if resume is not None:
        source.restore(resume)
    return source


def rl_loop(cfg: Config, run: Path, workers: Workers, resume: Path | None,
            saved: dict[str, Any] | None) -> dict[str, Any]:
    sampler = PromptSampler(load_task_data(cfg.data)[0], cfg.seed)
    transport = build_weight_transport(cfg)
    buffer = RolloutBuffer(cfg.rollout.max_staleness)
    monitor = CollapseMonitor(cfg.monitor)
    every, log = cfg.rollout.checkpoint_every, None
    try:
        state = resume_from(workers, transport, sampler, buffer, resume, saved) if resume else RunState()
        source = build_source(cfg, workers, transport, sampler, buffer, resume, state.version)
        log = open_run(cfg, run)
        if every and not resume:
            checkpoint(workers, state, sampler, buffer, monitor, run, source)  # the initial policy: a rollback target
        evals = PeriodicEval(cfg, workers)
        if evals.due(0) and not resume:  # the starting policy, logged as step 0
            log.log(0, {"step": 0, **evals()})
        bar = Progress(cfg.rollout.steps - state.step, "rl", cfg.logging.progress)
        while state.step < cfg.rollout.steps:
            state.step += 1
            t0 = time.monotonic()
            metrics, events, groups = source.learn(state, monitor)
            if state.step % cfg.logging.kl_probe_every == 0 and cfg.logging.kl_probe_size and not events:
                metrics.update(workers.learner.call_one(0, "kl_drift"))
            for event in events:
                log.event(state.step, event)
            action = strongest(events)
            if action is not None and action.action == "stop":
                raise RunStopped(f"step {state.step}: {action.message}; last checkpoint: "
                                 f"{monitor.rollback_target() if every else 'none (rollout.checkpoint_every=0)'}")
            if action is not None and action.action == "rollback":  # never publish what fired
                state = roll_back(workers, transport, sampler, buffer, monitor, run, action, state.version)
                source.rolled_back(step_dir(run, state.step), state.version)
                continue
            state.version += 1
            if state.version % cfg.rollout.publish_every == 0 or state.step == cfg.rollout.steps:
                metrics.update(source.publish(state.version))
            source.advance()
            if evals.due(state.step):
                source.before_eval(state.version)
                metrics.update(evals())  # after publish: the rollout workers hold the new weights
            metrics.update({"timing/step_total": time.monotonic() - t0,
                            "system/rollout_restarts": float(workers.rollout.restarts()),
                            "system/reward_restarts": float(workers.reward.restarts())})
            hist = workers.learner.call_one(0, "histograms") if state.step % cfg.logging.histogram_every == 0 else None
            log.log(state.step, metrics, samples=samples(groups), histograms=hist)
            state.history.append(metrics)
            bar.update(reward=metrics["rollout/reward_mean"])
            if (every and state.step % every == 0) or state.step == cfg.rollout.steps:  # the last: to continue
                checkpoint(workers, state, sampler, buffer, monitor, run, source)
        bar.close()
        workers.learner.call_one(0, "save_policy", str(run / "final"))
    finally:
        transport.close()
        if log is not None:
            log.close()
    return write_summary(run, state)


def write_summary(run: Path, state: RunState) -> dict[str, Any]:
    """RUN/summary.json: steps, policy version, the final checkpoint, first and last rollout reward."""
    history = state.history
    summary = {"steps": state.step, "version": state.version, "checkpoint": str(run / "final"),
               "reward_first": history[0]["rollout/reward_mean"] if history else None,
               "reward_last": history[-1]["rollout/reward_mean"] if history else None}
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


