"""Metric names: the one mapping from the names the workers report to the logged namespaces, and the
per-step rollout metrics computed from scored groups.

Logged namespaces (wandb keys and ``metrics.jsonl`` fields; OpenRLHF's ``rollout/`` and ``timing/``
convention, extended):

- ``rollout/*``: ``reward_mean``, ``reward_std`` (and per task ``reward_mean/<task>``,
  ``reward_std/<task>``), ``accuracy``, ``completion_length``, ``zero_variance_group_fraction``,
  ``tokens`` (completion tokens scored), ``tokens_per_s`` (tokens / generation seconds).
- ``ratio/*`` (the learner's loss diagnostics, learner/diagnostics.py): ``mean``, ``std``, ``max``,
  ``p99`` of the estimated ratio; ``log_mean``, ``log_std`` (the log-ratio noise); ``ess``,
  ``ess_fraction``; ``weight_max``, ``grad_weight_max``.
- ``clip/*``: ``low``, ``high``, ``bypass`` (A < 0 and r > 1 + eps), ``bypass_grad_share``.
- ``loss/*``: what else the loss reports, plus the optimiser's ``lr`` and ``updates``.
- ``grad/*``: ``pre_clip_norm``, ``spikes`` (the learner's per-update spike count).
- ``kl/*``: ``ref`` (the loss's k3 KL to its reference model), ``drift`` / ``drift_max`` (the fixed
  probe set, system/monitoring/probe.py).
- ``timing/*``: ``generation``, ``reward``, ``learner``, ``sync`` (weight broadcast), ``step``.
- ``system/*``: ``policy_version``, ``staleness_max``, ``rollout_restarts``, ``reward_restarts``.
- ``eval/*``: ``score``, ``score_stderr``, ``accuracy``, ``completion_length`` of the greedy test-split
  evaluation every ``rollout.eval_every`` steps (step 0: the starting policy); ``timing/eval``.
- ``monitor/*``: collapse-monitor firings (written by the logger, one key per detector).

``canonical_metrics`` is idempotent: canonical names map to themselves, and names it does not know
pass through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from system.types import RolloutGroup

__all__ = ["RENAMES", "canonical_metrics", "rollout_metrics", "rollout_values"]

RENAMES: dict[str, str] = {
    # learner/diagnostics.py, reported by the learner as loss/<name>
    "loss/ratio_mean": "ratio/mean",
    "loss/ratio_std": "ratio/std",
    "loss/ratio_max": "ratio/max",
    "loss/ratio_p99": "ratio/p99",
    "loss/log_ratio_mean": "ratio/log_mean",
    "loss/log_ratio_std": "ratio/log_std",
    "loss/ess": "ratio/ess",
    "loss/ess_fraction": "ratio/ess_fraction",
    "loss/weight_max": "ratio/weight_max",
    "loss/grad_weight_max": "ratio/grad_weight_max",
    "loss/clip_frac_low": "clip/low",
    "loss/clip_frac_high": "clip/high",
    "loss/bypass_frac": "clip/bypass",
    "loss/bypass_grad_share": "clip/bypass_grad_share",
    "loss/kl": "kl/ref",
    # learner/learner.py
    "train/lr": "loss/lr",
    "train/updates": "loss/updates",
    "rollout/zero_std_group_fraction": "rollout/zero_variance_group_fraction",
    # system/driver.py
    "timing/broadcast": "timing/sync",
    "timing/step_total": "timing/step",
}

DROPPED = frozenset({"step"})  # the step is the x axis, passed on its own


def canonical_metrics(raw: Mapping[str, object]) -> dict[str, float]:
    """The logged form of one step's metrics: keys renamed by ``RENAMES``, values as floats.

    Adds ``rollout/tokens_per_s`` when ``rollout/tokens`` and ``timing/generation`` (> 0) are present.
    Non-numeric values are dropped; NaN and inf are kept (the monitor's NaN detector reads them).
    """
    out: dict[str, float] = {}
    for key, value in raw.items():
        if key in DROPPED or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[RENAMES.get(key, key)] = float(value)
    tokens, seconds = out.get("rollout/tokens"), out.get("timing/generation")
    if "rollout/tokens_per_s" not in out and tokens is not None and seconds is not None and seconds > 0:
        out["rollout/tokens_per_s"] = tokens / seconds
    return out


def _completion_tokens(rollout: object) -> int:
    mask = getattr(rollout, "completion_mask", None)
    if mask is not None:
        return int(mask.sum())
    return int(rollout.completion_ids.numel())  # type: ignore[attr-defined]


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def rollout_metrics(groups: list[RolloutGroup]) -> dict[str, float]:
    """Per-task reward mean and population std, and completion tokens, of scored groups.

    Returns ``rollout/reward_mean/<task>``, ``rollout/reward_std/<task>``, ``rollout/tokens`` and
    ``rollout/completions`` (empty dict for no groups).
    """
    by_task: dict[str, list[float]] = {}
    tokens = completions = 0
    for group in groups:
        for rollout in group.rollouts:
            by_task.setdefault(group.example.task, []).append(float(rollout.reward))
            tokens += _completion_tokens(rollout)
            completions += 1
    if not completions:
        return {}
    out = {"rollout/tokens": float(tokens), "rollout/completions": float(completions)}
    for task, rewards in sorted(by_task.items()):
        mean, std = _mean_std(rewards)
        out[f"rollout/reward_mean/{task}"] = mean
        out[f"rollout/reward_std/{task}"] = std
    return out


def rollout_values(groups: list[RolloutGroup]) -> dict[str, list[float]]:
    """Per-completion values for histograms: ``rollout/reward`` and ``rollout/completion_tokens``."""
    rows = [r for g in groups for r in g.rollouts]
    return {"rollout/reward": [float(r.reward) for r in rows],
            "rollout/completion_tokens": [float(_completion_tokens(r)) for r in rows]}
