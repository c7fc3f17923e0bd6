"""The run's ``metrics.jsonl``: one JSON object per line, written by ``RunLogger`` and read by the report.

Record types (field ``type``):

- ``run``: once per logger start: ``time``, ``wandb_mode``, ``wandb_dir``, ``config`` (the resolved config).
- ``metrics``: one per logged step: ``step``, ``time`` and the canonical metrics as flat keys
  (``"rollout/reward_mean": 0.41``), names from system/monitoring/names.py.
- ``event``: a collapse-monitor firing: ``step``, ``time``, ``detector``, ``action``, ``message``,
  ``evidence`` (dict), ``rollback_to``, ``lr_scale``.
- ``histogram``: ``step``, ``name``, ``edges`` (bins + 1), ``counts``, ``count``, ``mean``, ``min``, ``max``.

Strict JSON has no NaN or inf, and a NaN is exactly what the monitor must record, so non-finite floats
are written as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` and read back as floats. A line
without ``type`` (the driver's earlier format) reads as a ``metrics`` record. After a rollback, steps
repeat in the file; ``latest_by_step`` keeps the last record of each step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from system.errors import DataError

__all__ = ["append_record", "decode", "encode", "latest_by_step", "read_records"]

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode(value: Any) -> Any:
    """``value`` with non-finite floats (at any depth of dicts and lists) replaced by their strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    return value


def decode(value: Any) -> Any:
    """The inverse of ``encode``."""
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a line (opened per call, so a crash loses at most the line being written)."""
    line = json.dumps(encode(record), allow_nan=False)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def read_records(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl, decoded; raises DataError naming the file and line of a bad one.
    A last line cut short (the writer died mid-line) is skipped."""
    if not path.is_file():
        raise DataError(f"{path}: not found; `stabledrl report RUN_DIR` reads RUN_DIR/metrics.jsonl, which "
                        "`stabledrl train` writes: check the run directory")
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                break
            raise DataError(f"{path}: line {number} is not JSON ({e.msg}); fix or delete that line") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number} is a {type(record).__name__}, not a JSON object")
        record = decode(record)
        record.setdefault("type", "metrics")
        if record["type"] in ("metrics", "event", "histogram") and not isinstance(record.get("step"), int):
            raise DataError(f"{path}: line {number} ({record['type']} record) has no integer 'step' "
                            f"(got {record.get('step')!r})")
        out.append(record)
    return out


def latest_by_step(records: list[dict[str, Any]], kind: str = "metrics") -> list[dict[str, Any]]:
    """Records of one type, the last per step (a rolled-back run repeats steps), ordered by step."""
    last: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.get("type") == kind:
            last[record["step"]] = record
    return [last[s] for s in sorted(last)]
