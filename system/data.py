"""Reading local data files with errors that name the file, the row and the field."""

from __future__ import annotations

import json
from pathlib import Path

from system.errors import DataError

__all__ = ["DataError", "read_jsonl", "write_jsonl"]


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a JSONL file; every row must be an object holding the ``required`` string fields."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start}); re-encode the file as UTF-8") from e
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for field in required:
                if field not in row:
                    raise DataError(f"{path}:{lineno}: missing field {field!r} (row has {sorted(row)})")
                if not isinstance(row[field], str):
                    raise DataError(f"{path}:{lineno}: field {field!r} must be a string, got {type(row[field]).__name__}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
