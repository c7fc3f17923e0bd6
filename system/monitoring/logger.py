"""RunLogger: every step's metrics to ``RUN_DIR/metrics.jsonl`` (always) and to wandb (online, offline or
disabled, from ``logging.wandb_mode``), with the resolved config, sparse sample tables, histograms and
the collapse monitor's events.

wandb specifics: the run is created with ``reinit="create_new"`` (several runs per process, e.g. tests),
``console="off"`` (the driver's stderr already goes to the job log) and files under
``logging.dir or RUN_DIR`` + ``/wandb``. Every metric is plotted against the logged ``step`` metric
(``define_metric("*", step_metric="step")``), so the steps a rollback repeats stay on one x axis instead
of being dropped by wandb's monotonic internal step. An event is a wandb alert (offline runs keep it
for ``wandb sync``) and a ``monitor/<detector>`` point. Samples go to ``RUN_DIR/samples.jsonl`` and a
wandb table every ``logging.table_every`` steps; histograms every ``logging.histogram_every`` steps.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from system.config import Config
from system.errors import ConfigError
from system.monitoring.dashboard import publish_workspace
from system.monitoring.names import canonical_metrics
from system.monitoring.records import append_record

if TYPE_CHECKING:  # the monitor imports torch (learner.diagnostics); the logger does not need it
    from system.monitoring.monitor import MonitorEvent

__all__ = ["RunLogger", "histogram"]

log = logging.getLogger("stabledrl.monitor")


def histogram(values: list[float], bins: int) -> dict[str, Any]:
    """Counts of the finite ``values`` in ``bins`` equal bins between their min and max, with summary
    stats; ``nonfinite`` counts the rest. Empty lists give empty counts."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    out: dict[str, Any] = {"count": int(finite.size), "nonfinite": int(arr.size - finite.size)}
    if finite.size == 0:
        return {**out, "edges": [], "counts": []}
    counts, edges = np.histogram(finite, bins=bins)
    return {**out, "edges": edges.tolist(), "counts": counts.tolist(), "mean": float(finite.mean()),
            "min": float(finite.min()), "max": float(finite.max())}


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


class RunLogger:
    """See the module docstring. Use as a context manager, or call ``close()``."""

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg = cfg.logging
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self.wandb_dir = Path(self.cfg.dir) if self.cfg.dir else self.run_dir
        self.run: Any = None if self.cfg.wandb_mode == "disabled" else self._init_wandb(cfg)
        append_record(self.path, {
            "type": "run", "time": time.time(), "wandb_mode": self.cfg.wandb_mode,
            "wandb_dir": str(self.wandb_dir / "wandb") if self.run is not None else None,
            "wandb_run_id": self.run.id if self.run is not None else None, "config": cfg.model_dump(mode="json"),
        })
        if self.run is not None and self.cfg.wandb_mode == "online" and self.cfg.publish_dashboard:
            publish_workspace(self.cfg.entity, self.cfg.project, f"{self.run.name}: reward collapse")

    def _init_wandb(self, cfg: Config) -> Any:
        import wandb

        self.wandb_dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", save_code=False)
        try:
            run = wandb.init(mode=self.cfg.wandb_mode, dir=str(self.wandb_dir), project=self.cfg.project,
                             entity=self.cfg.entity, name=self.cfg.run_name or self.run_dir.name,
                             tags=list(self.cfg.tags), config=cfg.model_dump(mode="json"),
                             reinit="create_new", settings=settings)
        except Exception as e:
            raise ConfigError(f"wandb.init (logging.wandb_mode={self.cfg.wandb_mode!r}, dir {self.wandb_dir}) "
                              f"failed: {type(e).__name__}: {e}. Online needs WANDB_API_KEY and network; or set "
                              "logging.wandb_mode=offline (later: wandb sync RUN_DIR/wandb/offline-run-*) or "
                              "disabled") from e
        run.define_metric("step")
        run.define_metric("*", step_metric="step")
        return run

    def log(self, step: int, metrics: dict[str, float], *, samples: list[dict] | None = None,
            histograms: dict[str, list[float]] | None = None) -> None:
        """One step: canonical metrics to metrics.jsonl and wandb; ``samples`` (dicts of one completion
        each, e.g. prompt / completion / reward) and ``histograms`` (name -> values) only on their
        configured steps."""
        values = canonical_metrics(metrics)
        now = time.time()
        append_record(self.path, {"type": "metrics", "step": step, "time": now, **values})
        payload: dict[str, Any] = {"step": step, **values}
        if histograms and _due(step, self.cfg.histogram_every):
            for name, data in histograms.items():
                hist = histogram(list(data), self.cfg.histogram_bins)
                append_record(self.path, {"type": "histogram", "step": step, "time": now, "name": name, **hist})
                if self.run is not None and hist["counts"]:
                    import wandb

                    payload[f"hist/{name}"] = wandb.Histogram(np_histogram=(hist["counts"], hist["edges"]))
        if samples and _due(step, self.cfg.table_every):
            columns, rows = self._table(samples)
            append_record(self.samples_path, {"step": step, "time": now,
                                              "rows": [dict(zip(columns, row)) for row in rows]})
            if self.run is not None:
                import wandb

                payload["samples"] = wandb.Table(columns=columns, data=rows)
        if self.run is not None:
            self.run.log(payload)

    def _table(self, samples: list[dict]) -> tuple[list[str], list[list[Any]]]:
        rows = samples[: self.cfg.table_rows]
        columns: list[str] = []
        for row in rows:
            columns.extend(str(k) for k in row if str(k) not in columns)
        limit = self.cfg.table_max_chars

        def cell(value: Any) -> Any:
            if isinstance(value, bool | int | float) or value is None:
                return value
            text = str(value)
            return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more chars]"

        return columns, [[cell(row.get(c)) for c in columns] for row in rows]

    def event(self, step: int, event: MonitorEvent) -> None:
        """Record a monitor firing: an ``event`` record, a warning log line, and on wandb an alert and a
        ``monitor/<detector>`` point."""
        append_record(self.path, {"type": "event", "time": time.time(), **event.to_record(), "step": step})
        log.warning("collapse monitor, step %d: %s -> %s: %s", step, event.detector, event.action, event.message)
        if self.run is None:
            return
        import wandb

        self.run.log({"step": step, f"monitor/{event.detector}": 1.0})
        evidence = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in event.evidence.items())
        level = wandb.AlertLevel.WARN if event.action == "alert" else wandb.AlertLevel.ERROR
        self.run.alert(title=f"{event.detector} at step {step} ({event.action})",
                       text=f"{event.message}\nevidence: {evidence}", level=level, wait_duration=0)

    def close(self, exit_code: int = 0) -> None:
        """Finish the wandb run (idempotent); a non-zero ``exit_code`` marks it failed (a monitor stop)."""
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(exit_code=0 if exc_type is None else 1)
