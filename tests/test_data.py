"""read_jsonl: rows back as written; every error names the file and (for a row) its line number."""

from __future__ import annotations

from pathlib import Path

import pytest

from system.data import DataError, read_jsonl, write_jsonl

REQUIRED = ("prompt", "completion")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        read_jsonl(path, REQUIRED)
    return str(info.value)


def test_round_trip_and_blank_lines(tmp_path: Path) -> None:
    rows = [{"prompt": "1+1=", "completion": "2", "extra": 3}, {"prompt": "é\n", "completion": ""}]
    path = tmp_path / "sub" / "rows.jsonl"
    write_jsonl(path, rows)
    assert read_jsonl(path, REQUIRED) == rows
    # blank lines are skipped, and line numbers still count them (see test_invalid_json_row)
    path.write_text('\n{"prompt": "a", "completion": "b"}\n\n   \n', encoding="utf-8")
    assert read_jsonl(path, REQUIRED) == [{"prompt": "a", "completion": "b"}]


def test_no_required_fields(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"x": 1}\n{}\n')
    assert read_jsonl(path) == [{"x": 1}, {}]


def test_invalid_json_row(tmp_path: Path) -> None:
    # line 1 ok, line 2 blank, line 3 broken
    path = _write(tmp_path, '{"prompt": "a", "completion": "b"}\n\n{"prompt": "a", \n')
    msg = _error(path)
    assert msg.startswith(f"{path}: row 3: not valid JSON (")


def test_non_object_row(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"prompt": "a", "completion": "b"}\n["a", "b"]\n')
    assert _error(path) == f"{path}: row 2: expected a JSON object, got list"


def test_non_object_scalar_row(tmp_path: Path) -> None:
    path = _write(tmp_path, '"just a string"\n')
    assert _error(path) == f"{path}: row 1: expected a JSON object, got str"


def test_missing_field(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "answer": "b"}\n')
    assert _error(path) == f"{path}: row 2: missing field 'completion' (row has ['answer', 'prompt'])"


def test_wrong_field_type(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b"}\n'
                            '{"prompt": 12, "completion": "b"}\n')
    assert _error(path) == f"{path}: row 3: field 'prompt' must be a string, got int"


def test_null_field(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"prompt": "a", "completion": null}\n')
    assert _error(path) == f"{path}: row 1: field 'completion' must be a string, got NoneType"


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    assert _error(path) == f"{path}: no rows"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    assert _error(path) == f"data file {path} not found"


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    assert _error(tmp_path) == f"data file {tmp_path} not found"


def test_invalid_utf8_row(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    # line 2 holds 'caf\xe9' in Latin-1, which is not valid UTF-8
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n')
    assert _error(path).startswith(f"{path}: row 2:")


def test_data_error_is_value_error() -> None:
    assert issubclass(DataError, ValueError)
