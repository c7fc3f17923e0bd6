"""The offline run report: ``RUN_DIR/report.png`` (the dashboard's panels, system/monitoring/dashboard.py,
drawn with matplotlib's Agg canvas, no display and no pyplot state) and a self-contained
``RUN_DIR/report.html`` (the PNG embedded as base64, tables and styles inline, nothing fetched), both
from ``RUN_DIR/metrics.jsonl`` alone.

Every panel draws the collapse monitor's events as vertical lines (orange alert, purple rollback, red
stop); the gradient-norm panel marks the steps where the learner counted a spike; steps repeated by a
rollback show their last run.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from system.monitoring.dashboard import DETECTORS, PANELS, Panel
from system.monitoring.records import latest_by_step, read_records

__all__ = ["RunData", "load_run", "render_html", "render_png", "write_report"]

ACTION_COLORS = {"alert": "tab:orange", "rollback": "tab:purple", "stop": "tab:red"}
COLUMNS = 2


@dataclass
class RunData:
    """What the report reads from metrics.jsonl."""

    name: str
    steps: list[int] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one per step, last record of the step
    events: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    wandb_mode: str | None = None

    @property
    def rl_steps(self) -> int:
        """Logged RL steps (step 0 is the evaluation of the starting policy, ``rollout.eval_every``)."""
        return sum(s > 0 for s in self.steps)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Steps and values of ``key`` (steps without it left out; inf drawn as a gap)."""
        xs, ys = [], []
        for step, record in zip(self.steps, self.metrics):
            value = record.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                xs.append(step)
                ys.append(float(value) if math.isfinite(value) else math.nan)
        return xs, ys


def load_run(run_dir: Path) -> RunData:
    """Read ``run_dir/metrics.jsonl`` (DataError naming the file and line when it cannot)."""
    records = read_records(Path(run_dir) / "metrics.jsonl")
    metrics = latest_by_step(records)
    data = RunData(name=Path(run_dir).resolve().name, steps=[r["step"] for r in metrics], metrics=metrics,
                   events=[r for r in records if r.get("type") == "event"])
    for record in records:
        if record.get("type") == "run":
            data.config, data.wandb_mode = record.get("config") or {}, record.get("wandb_mode")
    return data


def _draw_panel(ax: Any, panel: Panel, data: RunData) -> None:
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    drawn = False
    if panel.events:
        for row, detector in enumerate(DETECTORS):
            hits = [e for e in data.events if e.get("detector") == detector]
            ax.scatter([e["step"] for e in hits], [row] * len(hits), marker="v", s=40,
                       c=[ACTION_COLORS.get(e.get("action"), "black") for e in hits])
        ax.set_yticks(range(len(DETECTORS)), DETECTORS, fontsize=8)
        ax.set_ylim(-0.5, len(DETECTORS) - 0.5)
        drawn = bool(data.events)
    for i, key in enumerate(() if panel.events else panel.keys):
        xs, ys = data.series(key)
        if not xs:
            continue
        drawn = True
        ax.plot(xs, ys, label=key, linewidth=1.2)
        if i == 0 and panel.band:
            bx, band = data.series(panel.band)
            width = dict(zip(bx, band))
            lo = [y - width.get(x, math.nan) for x, y in zip(xs, ys)]
            hi = [y + width.get(x, math.nan) for x, y in zip(xs, ys)]
            ax.fill_between(xs, lo, hi, alpha=0.2, label=f"+- {panel.band}")
        if i == 0 and panel.marks:
            mx, marks = data.series(panel.marks)
            flagged = {x for x, v in zip(mx, marks) if v > 0}
            points = [(x, y) for x, y in zip(xs, ys) if x in flagged]
            if points:
                ax.scatter(*zip(*points), marker="x", color="tab:red", s=36, zorder=3, label="learner spike")
    if panel.log_y and drawn and all(y > 0 for k in panel.keys for y in data.series(k)[1] if math.isfinite(y)):
        ax.set_yscale("log")
    for event in data.events:
        ax.axvline(event["step"], color=ACTION_COLORS.get(event.get("action"), "black"), alpha=0.5,
                   linewidth=1, linestyle="--")
    if data.steps:
        ax.set_xlim(min(data.steps) - 0.5, max(data.steps) + 0.5)
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    elif not panel.events:
        ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)


def render_png(data: RunData, panels: tuple[Panel, ...] = PANELS, dpi: int = 100) -> bytes:
    """The dashboard as PNG bytes: ``panels`` in a grid of two columns, 7 x 3.2 inches each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = -(-len(panels) // COLUMNS)
    fig = Figure(figsize=(7 * COLUMNS, 3.2 * rows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(f"{data.name}: reward-collapse dashboard ({data.rl_steps} steps, {len(data.events)} events)")
    axes = fig.subplots(rows, COLUMNS, squeeze=False).flatten()
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel, data)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_rows(data: RunData) -> list[list[Any]]:
    cfg = data.config
    rows: list[list[Any]] = [["steps logged", data.rl_steps],
                             ["last step", data.steps[-1] if data.steps else None],
                             ["wandb mode", data.wandb_mode]]
    for section, key in (("algorithm", "name"), ("algorithm", "estimator"), ("model", "path"), ("data", "task")):
        if isinstance(cfg.get(section), dict) and key in cfg[section]:
            rows.append([f"{section}.{key}", cfg[section][key]])
    steps, rewards = data.series("rollout/reward_mean")
    finite = [(s, r) for s, r in zip(steps, rewards) if math.isfinite(r)]
    if finite:
        best = max(finite, key=lambda p: p[1])
        rows += [["reward first / last", f"{finite[0][1]:.4g} / {finite[-1][1]:.4g}"],
                 ["reward best (step)", f"{best[1]:.4g} ({best[0]})"]]
    evals = [(s, v) for s, v in zip(*data.series("eval/score")) if math.isfinite(v)]
    if evals:
        rows.append(["test score (eval/score) first / last", f"{evals[0][1]:.4g} (step {evals[0][0]}) / "
                     f"{evals[-1][1]:.4g} (step {evals[-1][0]})"])
    for action in ("alert", "rollback", "stop"):
        rows.append([f"events: {action}", sum(e.get("action") == action for e in data.events)])
    return rows


STYLE = ("body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:0.5em 0 1.5em}"
         "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}"
         "th{background:#f0f0f0}img{max-width:100%;border:1px solid #ddd}")


def render_html(data: RunData, png: bytes) -> str:
    """A self-contained page: summary, the dashboard image (data URI), events and the last metrics."""
    image = base64.b64encode(png).decode("ascii")
    events = [[e.get("step"), e.get("detector"), e.get("action"), e.get("message"), e.get("evidence"),
               e.get("rollback_to")] for e in data.events]
    last = data.metrics[-1] if data.metrics else {}
    metric_rows = [[k, v] for k, v in sorted(last.items()) if k not in ("type", "step", "time")]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(data.name)}: stabledrl report</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(data.name)}</h1><h2>Summary</h2>", _table(["", ""], _summary_rows(data)),
        "<h2>Reward-collapse dashboard</h2>",
        f'<img alt="dashboard panels" src="data:image/png;base64,{image}">',
        f"<h2>Collapse events ({len(events)})</h2>",
        _table(["step", "detector", "action", "message", "evidence", "rollback to"], events)
        if events else "<p>No detector fired.</p>",
        f"<h2>Metrics at step {html.escape(_fmt(last.get('step')))}</h2>", _table(["metric", "value"], metric_rows),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(run_dir: Path, out_dir: Path | None = None) -> dict[str, Any]:
    """Write report.png and report.html (into ``out_dir``, default ``run_dir``); returns their paths and
    counts."""
    data = load_run(Path(run_dir))
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = render_png(data)
    (out / "report.png").write_bytes(png)
    (out / "report.html").write_text(render_html(data, png), encoding="utf-8")
    return {"png": str(out / "report.png"), "html": str(out / "report.html"), "steps": len(data.steps),
            "events": len(data.events)}
