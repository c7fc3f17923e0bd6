"""Reading local data files with errors that name the file, the row and the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from system.errors import DataError

__all__ = ["DataError", "jsonl_records", "read_jsonl", "write_jsonl"]


def jsonl_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(row number, decoded JSON) for every non-blank line of a JSONL file; row numbers count blank
    lines too, so they are the file's line numbers. A line that is not UTF-8 or not JSON raises a
    DataError naming the file and the row."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: row {number}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                                "re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {number}: not valid JSON ({e.msg} at column {e.colno})") from None


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a JSONL file; every row must be an object holding the ``required`` string fields."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    rows = []
    for number, row in jsonl_records(path):
        where = f"{path}: row {number}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for field in required:
            if field not in row:
                raise DataError(f"{where}: missing field {field!r} (row has {sorted(row)})")
            if not isinstance(row[field], str):
                raise DataError(f"{where}: field {field!r} must be a string, got {type(row[field]).__name__}")
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
