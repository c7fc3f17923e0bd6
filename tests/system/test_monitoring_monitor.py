"""The collapse monitor: each detector on synthetic series (fires where it should, silent on noise under
its threshold), NaN detection, action resolution (rollback needs a good checkpoint, max_rollbacks),
rollback state, and checkpoint state round trips."""

from __future__ import annotations

import json
import math
import random

import pytest

from system.config import MonitorConfig
from system.monitoring.monitor import CollapseMonitor, MonitorEvent, strongest

QUIET = {"grad_spike_factor": None, "ratio_max": None, "log_ratio_std_max": None}


def monitor(**kw: object) -> CollapseMonitor:
    return CollapseMonitor(MonitorConfig(**kw))


def run(mon: CollapseMonitor, series: list[dict[str, float]], start: int = 1) -> list[MonitorEvent]:
    return [e for step, m in enumerate(series, start=start) for e in mon.observe(step, m)]


def rewards(values: list[float]) -> list[dict[str, float]]:
    return [{"rollout/reward_mean": v} for v in values]


# ---------------------------------------------------------------- reward collapse

def test_reward_collapse_fires_at_the_step_the_window_average_falls_past_drop() -> None:
    mon = monitor(reward_window=4, reward_drop=0.2, **QUIET)
    # steps 1-10 at 0.5, then 0.4, 0.3, 0.2, 0.1, 0.0, 0.0. Window averages (best 0.5 from step 4):
    # step 11: (0.5*3 + 0.4)/4 = 0.475 (fall 0.025); 12: 1.7/4 = 0.425 (0.075); 13: 1.4/4 = 0.35 (0.15);
    # step 14: (0.4 + 0.3 + 0.2 + 0.1)/4 = 0.25 (fall 0.25 > 0.2): fires; later steps stay latched.
    series = [0.5] * 10 + [0.4, 0.3, 0.2, 0.1, 0.0, 0.0]
    events = run(mon, rewards(series))
    assert [(e.detector, e.step, e.action) for e in events] == [("reward_collapse", 14, "alert")]
    ev = events[0].evidence
    assert ev["reward_average"] == pytest.approx(0.25, abs=1e-12)
    assert ev["running_best"] == pytest.approx(0.5, abs=1e-12)
    assert ev["fall"] == pytest.approx(0.25, abs=1e-12)
    assert "0.25 below its best 0.5" in events[0].message


def test_reward_collapse_rearms_after_recovery_and_fires_again() -> None:
    mon = monitor(reward_window=2, reward_drop=0.2, **QUIET)
    # window 2: 1.0,1.0 -> avg 1.0 (best); 0.6 -> avg 0.8 (fall 0.2, not > 0.2); 0.6 -> 0.6 (0.4): fires
    # at step 4. 1.0 -> 0.8 (0.2 > 0.1: still latched); 1.0 -> 1.0 (re-armed); 0.5 -> 0.75 (0.25): fires
    # at step 7.
    events = run(mon, rewards([1.0, 1.0, 0.6, 0.6, 1.0, 1.0, 0.5]))
    assert [e.step for e in events] == [4, 7]


def test_reward_collapse_silent_on_noise_under_threshold_and_before_the_window_fills() -> None:
    rng = random.Random(0)
    mon = monitor(reward_window=10, reward_drop=0.2, **QUIET)
    # noise sd 0.05: the 10-step average has sd 0.05 / sqrt(10) = 0.016, so its falls stay well under 0.2
    series = [0.5 + rng.gauss(0.0, 0.05) for _ in range(400)]
    assert run(mon, rewards(series)) == []
    assert 0.0 < mon.reward.best - sum(series[-10:]) / 10 < 0.1  # the detector did run
    mon = monitor(reward_window=5, reward_drop=0.2, **QUIET)
    assert run(mon, rewards([1.0, 0.0, 0.0, 0.0])) == []  # 4 < window values: not armed


def test_nonfinite_reward_is_not_averaged() -> None:
    mon = monitor(reward_window=2, reward_drop=0.2, **QUIET)
    events = run(mon, rewards([0.5, 0.5, math.nan, 0.5]))
    assert [e.detector for e in events] == ["nonfinite"]
    assert list(mon.reward.recent) == [0.5, 0.5]


# ---------------------------------------------------------------- gradient spikes

def grads(values: list[float]) -> list[dict[str, float]]:
    return [{"grad/pre_clip_norm": v, "grad/spikes": 0.0} for v in values]


def test_grad_spike_fires_above_factor_times_rolling_median() -> None:
    mon = monitor(grad_spike_factor=10.0, grad_spike_window=20, grad_spike_min_history=5, reward_drop=None)
    # 1.0 x 10 steps: median 1.0; step 11: 10.5 > 10 x 1.0 fires; step 12: 9.9 < 10 x median(1.0 x 10,
    # 10.5) = 10 x 1.0: silent; step 13: 20 fires.
    events = run(mon, grads([1.0] * 10 + [10.5, 9.9, 20.0]))
    assert [(e.detector, e.step) for e in events] == [("grad_spike", 11), ("grad_spike", 13)]
    assert events[0].evidence == {"pre_clip_norm": 10.5, "median": 1.0, "factor": 10.0, "learner_spikes": 0.0}


def test_grad_spike_not_armed_before_min_history() -> None:
    mon = monitor(grad_spike_factor=10.0, grad_spike_window=20, grad_spike_min_history=5, reward_drop=None)
    assert run(mon, grads([1.0, 1.0, 1.0, 1.0, 100.0])) == []  # only 4 norms recorded before the 5th


def test_grad_spike_silent_on_lognormal_noise() -> None:
    rng = random.Random(1)
    mon = monitor(grad_spike_factor=10.0, grad_spike_window=50, grad_spike_min_history=10, reward_drop=None)
    # log-normal sigma 0.3: norm / median = exp(0.3 z) <= exp(0.3 * 4.5) = 3.9 < 10 for any plausible z
    series = [math.exp(rng.gauss(0.0, 0.3)) for _ in range(500)]
    assert run(mon, grads(series)) == []
    assert max(series) / min(series) > 3.0  # the series is noisy


def test_nan_grad_norm_is_nonfinite_not_a_spike_and_not_recorded() -> None:
    mon = monitor(grad_spike_factor=10.0, grad_spike_window=20, grad_spike_min_history=2, reward_drop=None)
    events = run(mon, grads([1.0, 1.0, math.inf, 1.0]))
    assert [(e.detector, e.step) for e in events] == [("nonfinite", 3)]
    assert mon.spikes.state_dict()["norms"] == [1.0, 1.0, 1.0]


# ---------------------------------------------------------------- ratio blow-up and NaN

def test_ratio_blowup_on_max_ratio_and_on_log_ratio_std() -> None:
    mon = monitor(ratio_max=100.0, log_ratio_std_max=2.0, reward_drop=None, grad_spike_factor=None)
    series = [
        {"loss/ratio_max": 99.0, "loss/log_ratio_std": 1.9},  # under both: silent
        {"loss/ratio_max": 150.0, "loss/log_ratio_std": 1.0},  # raw learner names
        {"ratio/max": 2.0, "ratio/log_std": 2.5},  # canonical names
    ]
    events = run(mon, series)
    assert [(e.detector, e.step) for e in events] == [("ratio_blowup", 2), ("ratio_blowup", 3)]
    assert events[0].evidence == {"ratio_max": 150.0, "ratio_max_bound": 100.0, "log_ratio_std": 1.0,
                                  "log_ratio_std_bound": 2.0}
    assert events[0].message == "ratio blow-up: ratio_max 150 > 100"
    assert events[1].message == "ratio blow-up: log_ratio_std 2.5 > 2"


def test_ratio_blowup_bounds_can_be_off() -> None:
    mon = monitor(ratio_max=None, log_ratio_std_max=None, reward_drop=None, grad_spike_factor=None)
    assert run(mon, [{"ratio/max": 1e30, "ratio/log_std": 60.0}]) == []


def test_nan_and_inf_anywhere_fire_nonfinite_with_their_values() -> None:
    mon = monitor(reward_drop=None, grad_spike_factor=None, nonfinite_action="stop")
    events = run(mon, [{"loss/ratio_mean": math.nan, "timing/learner": math.inf, "rollout/accuracy": 0.5}])
    assert len(events) == 1 and events[0].detector == "nonfinite" and events[0].action == "stop"
    assert events[0].message == "non-finite metrics: ratio/mean, timing/learner"
    assert math.isnan(events[0].evidence["ratio/mean"]) and events[0].evidence["timing/learner"] == math.inf


def test_nonfinite_ignore_patterns() -> None:
    mon = monitor(nonfinite_ignore=["kl/*"], reward_drop=None, grad_spike_factor=None)
    assert run(mon, [{"loss/kl": math.nan, "kl/drift": math.nan}]) == []
    assert [e.detector for e in run(mon, [{"loss/ess": math.nan}], start=2)] == ["nonfinite"]


def test_disabled_monitor_never_fires() -> None:
    mon = monitor(enabled=False)
    assert run(mon, [{"loss/ess": math.nan, "ratio/max": 1e9}]) == []


# ---------------------------------------------------------------- actions and rollback

def test_detector_actions_override_the_default() -> None:
    mon = monitor(action="stop", ratio_action="alert", ratio_max=10.0, reward_drop=None, grad_spike_factor=None)
    events = run(mon, [{"ratio/max": 11.0, "ratio/mean": math.nan}])
    # nonfinite_action defaults to rollback; with no good checkpoint it becomes a stop
    assert {e.detector: e.action for e in events} == {"ratio_blowup": "alert", "nonfinite": "stop"}
    assert strongest(events).detector == "nonfinite"
    nan_event = next(e for e in events if e.detector == "nonfinite")
    assert nan_event.message.endswith("stopping: no good checkpoint to roll back to")
    assert nan_event.rollback_to is None


def test_strongest_prefers_stop_then_rollback_then_alert() -> None:
    a, r, s = (MonitorEvent("x", 1, act, "") for act in ("alert", "rollback", "stop"))
    assert strongest([]) is None
    assert strongest([a, r]) is r and strongest([r, s, a]) is s and strongest([a]) is a


def test_rollback_targets_the_last_good_checkpoint_and_restores_detectors() -> None:
    mon = monitor(reward_window=2, reward_drop=0.2, grad_spike_factor=None, action="rollback",
                  rollback_lr_scale=0.25)
    assert mon.checkpoint_saved(0)  # the initial weights, nothing observed yet
    run(mon, rewards([1.0, 1.0]))
    assert mon.checkpoint_saved(2)
    assert not mon.checkpoint_saved(1)  # not the last observed step
    events = run(mon, rewards([0.6, 0.6]), start=3)  # averages 0.8, 0.6: fires at step 4
    assert [(e.step, e.action, e.rollback_to, e.lr_scale) for e in events] == [(4, "rollback", 2, 0.25)]
    assert events[0].message.endswith("rolling back to step 2")
    assert not mon.checkpoint_saved(4)  # it fired at step 4
    mon.rolled_back(2)
    assert (mon.reward.latched, list(mon.reward.recent), mon.reward.best) == (False, [1.0, 1.0], 1.0)
    assert mon.rollbacks == 1 and mon.rollback_target() == 2
    assert run(mon, rewards([1.0]), start=3) == []  # the replayed step 3, now healthy
    assert mon.checkpoint_saved(3) and mon.rollback_target() == 3


def test_no_good_checkpoint_while_a_collapse_is_latched() -> None:
    mon = monitor(reward_window=1, reward_drop=0.2, grad_spike_factor=None, action="rollback")
    run(mon, rewards([1.0]))
    assert mon.checkpoint_saved(1)
    run(mon, rewards([0.5]), start=2)  # fires (fall 0.5) and latches
    assert run(mon, rewards([0.5]), start=3) == []  # latched: no new event...
    assert not mon.checkpoint_saved(3)  # ...but step 3 is not good
    assert mon.rollback_target() == 1


def test_rollbacks_past_max_become_stops() -> None:
    mon = monitor(max_rollbacks=1, reward_drop=None, grad_spike_factor=None)
    run(mon, [{"ratio/mean": 1.0}])
    assert mon.checkpoint_saved(1)
    (first,) = run(mon, [{"ratio/mean": math.nan}], start=2)
    assert (first.action, first.rollback_to) == ("rollback", 1)
    mon.rolled_back(1)
    (second,) = run(mon, [{"ratio/mean": math.nan}], start=2)
    assert second.action == "stop" and "1 rollbacks already (monitor.max_rollbacks=1)" in second.message


def test_a_raised_nan_loss_is_a_nonfinite_event_and_not_a_good_step() -> None:
    mon = monitor(reward_drop=None, grad_spike_factor=None)
    assert mon.checkpoint_saved(0)
    event = mon.nonfinite_failure(1, "non-finite policy loss nan at update 0")
    assert (event.detector, event.step, event.action, event.rollback_to) == ("nonfinite", 1, "rollback", 0)
    assert event.message == "non-finite value: non-finite policy loss nan at update 0; rolling back to step 0"
    assert not mon.checkpoint_saved(1) and mon.fired == {"nonfinite": 1}


def test_rolled_back_to_an_unknown_step_is_an_error() -> None:
    mon = monitor()
    with pytest.raises(ValueError, match=r"rolled_back\(7\): not a good checkpoint step .*known: \[\]"):
        mon.rolled_back(7)


def test_later_good_checkpoints_are_forgotten_after_a_rollback() -> None:
    mon = monitor(reward_drop=None, grad_spike_factor=None)
    for step in (1, 2, 3):
        run(mon, [{"x": 1.0}], start=step)
        assert mon.checkpoint_saved(step)
    mon.rolled_back(2)
    assert sorted(mon.good) == [1, 2]


def test_state_dict_round_trips_through_json() -> None:
    cfg = {"reward_window": 3, "reward_drop": 0.2, "grad_spike_factor": 5.0, "grad_spike_window": 10,
           "grad_spike_min_history": 2}
    a = monitor(**cfg)
    rng = random.Random(2)
    head = [{"rollout/reward_mean": 0.8 + 0.01 * rng.random(), "grad/pre_clip_norm": 1.0} for _ in range(6)]
    run(a, head)
    assert a.checkpoint_saved(6)
    b = monitor(**cfg)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    tail = [{"rollout/reward_mean": r, "grad/pre_clip_norm": g} for r, g in
            [(0.8, 1.0), (0.5, 6.0), (0.4, 1.0), (0.2, 1.0)]]
    ea, eb = run(a, tail, start=7), run(b, tail, start=7)
    assert [e.to_record() for e in ea] == [e.to_record() for e in eb]
    assert {e.detector for e in ea} == {"reward_collapse", "grad_spike"}
    assert b.rollback_target() == 6 and b.fired == a.fired


def test_config_rejects_min_history_above_window() -> None:
    with pytest.raises(ValueError, match=r"grad_spike_min_history \(20\) must be at most grad_spike_window \(10\)"):
        MonitorConfig(grad_spike_window=10, grad_spike_min_history=20)
