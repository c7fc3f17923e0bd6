"""The collapse monitor: detectors over each RL step's metrics, and the decision of what a firing does.

Detectors (each configured in ``monitor``, system/config.py ``MonitorConfig``):

- ``reward_collapse``: the moving average of ``reward_key`` over ``reward_window`` steps falls more
  than ``reward_drop`` below its running best. It latches (one event per collapse) and re-arms once
  the average is back within ``reward_drop / 2`` of the best.
- ``grad_spike``: ``grad/pre_clip_norm`` above ``grad_spike_factor`` times the rolling median of
  earlier steps' norms (``learner.diagnostics.SpikeDetector``, the learner's own rule, here applied to
  the step's largest update norm with the monitor's factor and window).
- ``ratio_blowup``: ``ratio/max`` above ``ratio_max`` or ``ratio/log_std`` above ``log_ratio_std_max``.
- ``nonfinite``: any metric NaN or infinite (``nonfinite_ignore`` patterns excepted).

The monitor only decides and records; the driver executes: ``alert`` (the logger's wandb alert and log
line), ``stop`` (checkpoint, exit non-zero with the event's message), ``rollback`` (restore the
checkpoint of ``event.rollback_to``, scale the learning rate by ``event.lr_scale``, call
``monitor.rolled_back(step)``, continue). A rollback needs a good checkpoint: the driver reports each
checkpoint with ``checkpoint_saved(step)``, and it is good when no detector fired at that step and none
was in alarm (a latched reward collapse). Without one, or after ``max_rollbacks``, a rollback becomes
a stop, and the event's message says why. Non-finite values never enter the other detectors' state.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from learner.diagnostics import SpikeDetector
from system.config import MonitorConfig
from system.monitoring.names import canonical_metrics

__all__ = ["ACTION_RANK", "CollapseMonitor", "MonitorEvent", "strongest"]

Action = Literal["alert", "stop", "rollback"]
ACTION_RANK: dict[str, int] = {"alert": 0, "rollback": 1, "stop": 2}
KEEP_SNAPSHOTS = 4  # detector states kept for the most recent good checkpoints


@dataclass
class MonitorEvent:
    """One firing of one detector.

    Attributes:
        detector: ``reward_collapse``, ``grad_spike``, ``ratio_blowup`` or ``nonfinite``.
        step: the RL step whose metrics fired it.
        action: what the driver does (already resolved: a rollback without a good checkpoint is a stop).
        message: one line for logs, alerts and the exit reason.
        evidence: the values that fired it and the thresholds they crossed.
        rollback_to: the checkpoint step to restore (action ``rollback`` only).
        lr_scale: factor for the learning rate after the rollback (action ``rollback`` only).
    """

    detector: str
    step: int
    action: Action
    message: str
    evidence: dict[str, float] = field(default_factory=dict)
    rollback_to: int | None = None
    lr_scale: float | None = None

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def strongest(events: list[MonitorEvent]) -> MonitorEvent | None:
    """The event the driver acts on: stop over rollback over alert (the first of equals); None if none."""
    best: MonitorEvent | None = None
    for event in events:
        if best is None or ACTION_RANK[event.action] > ACTION_RANK[best.action]:
            best = event
    return best


class RewardCollapse:
    """Moving average of the reward against its running best (see the module docstring)."""

    name = "reward_collapse"

    def __init__(self, window: int, drop: float) -> None:
        self.window, self.drop = window, drop
        self.recent: deque[float] = deque(maxlen=window)
        self.best: float | None = None
        self.latched = False

    def observe(self, reward: float | None) -> dict[str, float] | None:
        """Evidence when a collapse starts at this step, else None."""
        if reward is None or not math.isfinite(reward):
            return None
        self.recent.append(reward)
        if len(self.recent) < self.window:
            return None
        average = sum(self.recent) / self.window
        self.best = average if self.best is None else max(self.best, average)
        fall = self.best - average
        if self.latched:
            self.latched = fall > self.drop / 2
            return None
        if fall > self.drop:
            self.latched = True
            return {"reward_average": average, "running_best": self.best, "fall": fall, "drop": self.drop,
                    "window": float(self.window)}
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "best": self.best, "latched": self.latched}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.recent.clear()
        self.recent.extend(float(v) for v in state["recent"])
        self.best = None if state["best"] is None else float(state["best"])
        self.latched = bool(state["latched"])


def _finite(metrics: Mapping[str, float], key: str) -> float | None:
    value = metrics.get(key)
    return value if value is not None and math.isfinite(value) else None


class CollapseMonitor:
    """Runs the configured detectors on each step's metrics and resolves their actions."""

    def __init__(self, cfg: MonitorConfig) -> None:
        self.cfg = cfg
        self.reward = RewardCollapse(cfg.reward_window, cfg.reward_drop) if cfg.reward_drop is not None else None
        self.spikes = (SpikeDetector(cfg.grad_spike_factor, cfg.grad_spike_window, cfg.grad_spike_min_history)
                       if cfg.grad_spike_factor is not None else None)
        self.good: dict[int, dict[str, Any]] = {}  # good checkpoint step -> detector state at that step
        self.rollbacks = 0
        self.fired: dict[str, int] = {}
        self.last_step: int | None = None
        self.last_step_clean = True

    # ------------------------------------------------------------------ detectors

    def observe(self, step: int, metrics: Mapping[str, object]) -> list[MonitorEvent]:
        """Run the detectors on one step's metrics (raw or canonical names); the events that fired."""
        if not self.cfg.enabled:
            self.last_step, self.last_step_clean = step, True
            return []
        m = canonical_metrics(metrics)
        found: list[tuple[str, str, dict[str, float]]] = []
        if self.cfg.nonfinite and (bad := self._nonfinite(m)):
            found.append(("nonfinite", f"non-finite metrics: {', '.join(sorted(bad))}",
                          {k: m[k] for k in sorted(bad)}))
        if self.reward is not None and (ev := self.reward.observe(_finite(m, self.cfg.reward_key))):
            found.append(("reward_collapse", f"{self.cfg.reward_key} moving average {ev['reward_average']:.4g} "
                          f"is {ev['fall']:.4g} below its best {ev['running_best']:.4g} "
                          f"(drop threshold {self.cfg.reward_drop:g})", ev))
        if self.spikes is not None and (ev := self._grad_spike(m)):
            found.append(("grad_spike", f"grad/pre_clip_norm {ev['pre_clip_norm']:.4g} exceeds "
                          f"{ev['factor']:g} x the rolling median {ev['median']:.4g}", ev))
        if ev := self._ratio_blowup(m):
            found.append(("ratio_blowup", "ratio blow-up: " + ", ".join(
                f"{k} {ev[k]:.4g} > {ev[k + '_bound']:g}" for k in ("ratio_max", "log_ratio_std")
                if k + "_bound" in ev and ev[k] > ev[k + "_bound"]), ev))
        events = [self._event(step, name, message, evidence) for name, message, evidence in found]
        for event in events:
            self.fired[event.detector] = self.fired.get(event.detector, 0) + 1
        alarm = self.reward is not None and self.reward.latched
        self.last_step, self.last_step_clean = step, not events and not alarm
        return events

    def nonfinite_failure(self, step: int, error: str) -> MonitorEvent:
        """The event for a step that raised on a non-finite value before any metrics existed (the
        learner's FloatingPointError on a NaN loss): a ``nonfinite`` firing with ``nonfinite_action``
        resolved as for ``observe``; the step is not good."""
        event = self._event(step, "nonfinite", f"non-finite value: {error}", {})
        self.fired["nonfinite"] = self.fired.get("nonfinite", 0) + 1
        self.last_step, self.last_step_clean = step, False
        return event

    def _nonfinite(self, m: Mapping[str, float]) -> list[str]:
        return [k for k, v in m.items() if not math.isfinite(v)
                and not any(fnmatch.fnmatchcase(k, p) for p in self.cfg.nonfinite_ignore)]

    def _grad_spike(self, m: Mapping[str, float]) -> dict[str, float] | None:
        assert self.spikes is not None
        norm = _finite(m, "grad/pre_clip_norm")
        if norm is None:
            return None
        median = self.spikes.median
        if not self.spikes.observe(norm):
            return None
        assert median is not None  # a finite norm is a spike only against a median
        return {"pre_clip_norm": norm, "median": median, "factor": self.spikes.factor,
                "learner_spikes": m.get("grad/spikes", 0.0)}

    def _ratio_blowup(self, m: Mapping[str, float]) -> dict[str, float] | None:
        ratio_max, log_std = _finite(m, "ratio/max"), _finite(m, "ratio/log_std")
        bound_max, bound_std = self.cfg.ratio_max, self.cfg.log_ratio_std_max
        over_max = bound_max is not None and ratio_max is not None and ratio_max > bound_max
        over_std = bound_std is not None and log_std is not None and log_std > bound_std
        if not (over_max or over_std):
            return None
        evidence: dict[str, float] = {}
        if ratio_max is not None and bound_max is not None:
            evidence.update(ratio_max=ratio_max, ratio_max_bound=bound_max)
        if log_std is not None and bound_std is not None:
            evidence.update(log_ratio_std=log_std, log_ratio_std_bound=bound_std)
        return evidence

    # ------------------------------------------------------------------ actions

    def _configured_action(self, detector: str) -> Action:
        own = {"reward_collapse": self.cfg.reward_action, "grad_spike": self.cfg.grad_spike_action,
               "ratio_blowup": self.cfg.ratio_action, "nonfinite": self.cfg.nonfinite_action}[detector]
        return own if own is not None else self.cfg.action

    def _event(self, step: int, detector: str, message: str, evidence: dict[str, float]) -> MonitorEvent:
        action = self._configured_action(detector)
        if action != "rollback":
            return MonitorEvent(detector, step, action, message, evidence)
        target = self.rollback_target()
        if target is None:
            return MonitorEvent(detector, step, "stop", message + "; stopping: no good checkpoint to roll back to",
                                evidence)
        if self.rollbacks >= self.cfg.max_rollbacks:
            return MonitorEvent(detector, step, "stop", message + f"; stopping: {self.rollbacks} rollbacks "
                                f"already (monitor.max_rollbacks={self.cfg.max_rollbacks})", evidence)
        return MonitorEvent(detector, step, "rollback", message + f"; rolling back to step {target}", evidence,
                            rollback_to=target, lr_scale=self.cfg.rollback_lr_scale)

    def checkpoint_saved(self, step: int) -> bool:
        """Record that the driver saved a checkpoint at ``step``; True when it is a good rollback target.

        Good: ``step`` is the last observed step, whose observation fired nothing while no detector was in
        alarm; or nothing has been observed yet (the initial weights). A checkpoint of any other step (saved
        before observing its metrics, or of an older step) is not a target: observe, then checkpoint.
        """
        if self.last_step is not None and (step != self.last_step or not self.last_step_clean):
            return False
        self.good[step] = self._detector_state()
        for old in sorted(self.good)[:-KEEP_SNAPSHOTS]:
            del self.good[old]
        return True

    def rollback_target(self) -> int | None:
        """The latest good checkpoint step, or None."""
        return max(self.good) if self.good else None

    def rolled_back(self, step: int) -> None:
        """The driver restored the checkpoint of ``step``: detectors return to their state at that step,
        later good checkpoints are forgotten (that future was abandoned), and the rollback is counted."""
        if step not in self.good:
            raise ValueError(f"rolled_back({step}): not a good checkpoint step of this monitor "
                             f"(known: {sorted(self.good)}); roll back to event.rollback_to")
        self._load_detector_state(self.good[step])
        self.good = {s: v for s, v in self.good.items() if s <= step}
        self.rollbacks += 1
        self.last_step, self.last_step_clean = step, True

    # ------------------------------------------------------------------ state

    def _detector_state(self) -> dict[str, Any]:
        return copy.deepcopy({"reward": self.reward.state_dict() if self.reward else None,
                              "spikes": self.spikes.state_dict() if self.spikes else None})

    def _load_detector_state(self, state: Mapping[str, Any]) -> None:
        if self.reward is not None and state.get("reward") is not None:
            self.reward.load_state_dict(state["reward"])
        if self.spikes is not None and state.get("spikes") is not None:
            self.spikes.load_state_dict(state["spikes"])

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON-serialisable) for checkpoints."""
        return {"detectors": self._detector_state(), "good": {str(k): v for k, v in self.good.items()},
                "rollbacks": self.rollbacks, "fired": dict(self.fired), "last_step": self.last_step,
                "last_step_clean": self.last_step_clean}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._load_detector_state(state["detectors"])
        self.good = {int(k): copy.deepcopy(v) for k, v in state["good"].items()}
        self.rollbacks = int(state["rollbacks"])
        self.fired = {str(k): int(v) for k, v in state["fired"].items()}
        self.last_step = None if state["last_step"] is None else int(state["last_step"])
        self.last_step_clean = bool(state["last_step_clean"])
