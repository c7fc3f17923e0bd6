"""Reading task data from local files: JSONL, Parquet, CSV, or a directory written by
``datasets.Dataset.save_to_disk``. Nothing is downloaded.

Owns :func:`read_rows` (every row with its 1-based row number and the file it came from) and
:class:`Row`, whose accessors raise :class:`~system.errors.DataError` naming the file, the row number
and the field, with the fields the row does have. Row numbers are JSONL line numbers and 1-based
record positions for the other formats.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from system.data import jsonl_records
from system.errors import DataError

FORMATS = ("jsonl", "parquet", "csv", "save_to_disk directory")


@dataclass(frozen=True)
class Row:
    """One record of a data file, with where it came from (for error messages)."""

    source: str
    number: int
    data: dict[str, Any]

    def where(self, field: str | None = None) -> str:
        at = f"{self.source}: row {self.number}"
        return f"{at}, field {field!r}" if field else at

    def fail(self, field: str | None, problem: str) -> DataError:
        return DataError(f"{self.where(field)}: {problem}")

    def _find(self, names: tuple[str, ...]) -> str | None:
        return next((n for n in names if n in self.data and self.data[n] is not None), None)

    def has(self, *names: str) -> bool:
        return self._find(names) is not None

    def text(self, *names: str, allow_empty: bool = False) -> str:
        """The first present field of ``names`` as a string (numbers are accepted and converted)."""
        name = self._find(names)
        if name is None:
            raise self.fail(names[0], f"missing (expected one of {list(names)}; the row has {sorted(self.data)})")
        value = self.data[name]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(name, f"must be a string, got {type(value).__name__}")
        value = str(value)
        if not allow_empty and not value.strip():
            raise self.fail(name, "is empty")
        return value

    def optional_text(self, *names: str) -> str | None:
        return self.text(*names, allow_empty=True) if self._find(names) is not None else None

    def integer(self, *names: str) -> int:
        name = self._find(names)
        if name is None:
            raise self.fail(names[0], f"missing (expected one of {list(names)}; the row has {sorted(self.data)})")
        value = self.data[name]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isascii() and value.strip().lstrip("-").isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"must be an integer, got {value!r}")
        return value

    def text_list(self, *names: str) -> list[str]:
        name = self._find(names)
        if name is None:
            raise self.fail(names[0], f"missing (expected one of {list(names)}; the row has {sorted(self.data)})")
        value = self.data[name]
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(name, f"must be a list of strings, got {type(value).__name__}")
        return value


def read_rows(path: str | Path) -> list[Row]:
    """Every record of a local data file or ``save_to_disk`` directory.

    Raises:
        DataError: the path is missing or of an unknown format, a record is not an object, or the
            dataset is empty. Messages name the path and, for a bad record, its row number.
    """
    path = Path(path)
    if path.is_dir():
        rows = _read_saved_dataset(path)
    elif not path.is_file():
        raise DataError(f"data path {path} not found (give a local .jsonl, .parquet or .csv file, or a "
                        "directory written by datasets' save_to_disk)")
    elif path.suffix in (".jsonl", ".json", ".ndjson"):
        rows = _read_jsonl(path)
    elif path.suffix in (".parquet", ".pq"):
        rows = _read_parquet(path)
    elif path.suffix == ".csv":
        rows = _read_csv(path)
    else:
        raise DataError(f"{path}: unknown data format {path.suffix!r}; known: {', '.join(FORMATS)}")
    if not rows:
        raise DataError(f"{path}: the dataset is empty (no rows)")
    return rows


def _rows(source: str, records: Iterable[tuple[int, Any]]) -> list[Row]:
    out = []
    for number, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{source}: row {number}: expected an object, got {type(record).__name__}")
        out.append(Row(source, number, record))
    return out


def _read_jsonl(path: Path) -> list[Row]:
    return _rows(str(path), jsonl_records(path))


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from e
    return _rows(str(path), enumerate(table.to_pylist(), start=1))


def _read_csv(path: Path) -> list[Row]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            records = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({e})") from e
    return _rows(str(path), enumerate(records, start=1))


def _read_saved_dataset(path: Path) -> list[Row]:
    from datasets import Dataset, DatasetDict, load_from_disk

    if not (path / "dataset_info.json").is_file() and not (path / "dataset_dict.json").is_file():
        raise DataError(f"{path}: a directory, but not one written by datasets' save_to_disk "
                        "(no dataset_info.json or dataset_dict.json)")
    try:
        data = load_from_disk(str(path))
    except Exception as e:  # datasets raises several types for a damaged directory
        raise DataError(f"{path}: cannot load the saved dataset ({type(e).__name__}: {e})") from e
    if isinstance(data, DatasetDict):
        splits = sorted(data)
        if len(splits) != 1:
            raise DataError(f"{path}: a DatasetDict with splits {splits}; pass one split's directory, "
                            f"e.g. {path / splits[0]}" if splits else f"{path}: a DatasetDict without splits")
        data = data[splits[0]]
    assert isinstance(data, Dataset)
    return _rows(str(path), enumerate(data.to_list(), start=1))
