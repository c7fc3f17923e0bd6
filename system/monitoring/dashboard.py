"""The reward-collapse dashboard, defined once: the panels that ``stabledrl report`` draws offline and
that a wandb workspace view shows online.

Panels (canonical metric names, system/monitoring/names.py), in reading order of a collapse:

1. Reward: ``rollout/reward_mean`` (band: +- ``rollout/reward_std``), ``rollout/accuracy`` and the
   test-split ``eval/score`` (``rollout.eval_every``).
2. Ratio std and max: ``ratio/std``, ``ratio/p99``, ``ratio/max`` (log scale): the estimator's noise.
3. Log-ratio noise: ``ratio/log_std``: the noise floor at theta = theta_old.
4. Clip bypass: ``clip/bypass`` (fraction in A < 0, r > 1 + eps) and ``clip/bypass_grad_share``.
5. Effective sample size: ``ratio/ess_fraction`` (ESS / group size).
6. Gradient norm: ``grad/pre_clip_norm`` (log scale), steps with learner spikes (``grad/spikes`` > 0)
   marked.
7. KL drift: ``kl/drift`` (fixed probe set), ``kl/ref`` (the loss's KL to its reference).
8. Collapse events: ``monitor/<detector>`` (1 at each firing); every other panel draws the events as
   vertical lines (offline).

Online, ``publish_workspace`` saves them as a section of a wandb workspace view with the
``wandb-workspaces`` package (``build_workspace`` makes the object without any network call).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["DETECTORS", "PANELS", "Panel", "build_workspace", "publish_workspace"]

log = logging.getLogger(__name__)

DETECTORS = ("reward_collapse", "grad_spike", "ratio_blowup", "nonfinite")


@dataclass(frozen=True)
class Panel:
    """One chart: lines of ``keys`` against the step.

    Attributes:
        title: chart title.
        keys: canonical metric names drawn as lines.
        log_y: logarithmic y axis.
        band: a key drawn as a +- band around the first line (offline only).
        marks: a key whose steps with a value > 0 are marked on the first line.
        events: the collapse-events panel (one row per detector).
    """

    title: str
    keys: tuple[str, ...]
    log_y: bool = False
    band: str | None = None
    marks: str | None = None
    events: bool = False


PANELS: tuple[Panel, ...] = (
    Panel("Reward", ("rollout/reward_mean", "rollout/accuracy", "eval/score"), band="rollout/reward_std"),
    Panel("Ratio std and max", ("ratio/std", "ratio/p99", "ratio/max"), log_y=True),
    Panel("Log-ratio noise", ("ratio/log_std",)),
    Panel("Clip bypass", ("clip/bypass", "clip/bypass_grad_share")),
    Panel("Effective sample size", ("ratio/ess_fraction",)),
    Panel("Gradient norm (spikes marked)", ("grad/pre_clip_norm",), log_y=True, marks="grad/spikes"),
    Panel("KL drift", ("kl/drift", "kl/ref")),
    Panel("Collapse events", tuple(f"monitor/{d}" for d in DETECTORS), events=True),
)


def build_workspace(entity: str, project: str, name: str, panels: tuple[Panel, ...] = PANELS) -> Any:
    """A ``wandb_workspaces.workspaces.Workspace`` with one open section of ``panels`` (x axis: the
    ``step`` metric the logger defines). Builds the object only; nothing is sent."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    plots = []
    for panel in panels:
        marks = {key: "points" for key in panel.keys} if panel.events else None
        plots.append(wr.LinePlot(title=panel.title, x="step", y=list(panel.keys), log_y=panel.log_y or None,
                                 line_marks=marks))
    section = ws.Section(name="Reward collapse", panels=plots, is_open=True)
    return ws.Workspace(entity=entity, project=project, name=name, sections=[section])


def publish_workspace(entity: str | None, project: str, name: str) -> str | None:
    """Save the dashboard as a workspace view (online); its URL, or None with a warning on any failure
    (no package, no network, no entity): the dashboard never stops a run."""
    try:
        import wandb

        entity = entity or wandb.Api().default_entity
        if not entity:
            raise ValueError("no wandb entity: set logging.entity")
        workspace = build_workspace(entity, project, name).save()
        return str(workspace.url)
    except Exception as e:  # a dashboard failure is reported, never fatal
        log.warning("the reward-collapse dashboard was not published (%s: %s); its panels are listed in "
                    "system/monitoring/dashboard.py", type(e).__name__, e)
        return None
