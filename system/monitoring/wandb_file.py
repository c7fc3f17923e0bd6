"""Reads what an offline wandb run recorded, from its ``run-<id>.wandb`` file, with no network.

wandb (0.31) no longer ships a Python reader for these files, so this is a small one. The layout (as
the files show it): a 7-byte header (``:W&B``, a 2-byte magic, a version byte), then LevelDB-log
framing in 32 KiB blocks: each chunk is ``crc32 (4, little-endian) | length (2) | type (1) | data``,
with type 1 a whole record, 2 / 3 / 4 its first / middle / last piece, and a block tail shorter than a
chunk header zero-filled. The CRC is zlib's crc32 of the type byte then the data. Each record is a
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["OfflineRun", "find_offline_run", "read_offline_run", "wandb_records"]

HEADER = 7
BLOCK = 32768
CHUNK = 7  # crc32 + length + type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunks(data: bytes, path: Path) -> Iterator[tuple[int, bytes]]:
    pos = HEADER
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK:
            pos += left
            continue
        if pos + CHUNK > len(data):
            return
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK])
        if kind == 0 and length == 0:  # zero fill to the end of the block
            pos += left
            continue
        payload = data[pos + CHUNK:pos + CHUNK + length]
        if len(payload) < length:
            return  # the writer is still running (or died): a cut-short last chunk
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: bad checksum at byte {pos}; the file is corrupt")
        yield kind, payload
        pos += CHUNK + length


def wandb_records(path: Path) -> Iterator[Any]:
    """The ``Record`` protobufs of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a wandb run file (no ':W&B' header)")
    pending = b""
    for kind, payload in _chunks(data, path):
        if kind in (FIRST, MIDDLE):
            pending = (b"" if kind == FIRST else pending) + payload
            continue
        record = pb.Record()
        record.ParseFromString(pending + payload if kind == LAST else payload)
        pending = b""
        yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    """What the run file holds: the config, one dict per ``log`` call, the last summary, the alerts."""

    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    alerts: list[dict[str, str]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    finished: bool = False  # the exit record is there: the run was finished and its file is complete

    def logged_keys(self) -> set[str]:
        """Every key logged in any history row."""
        return set().union(*self.history) if self.history else set()


def _config_items(items: Any, into: dict[str, Any]) -> None:
    for item in items:
        value = json.loads(item.value_json)
        into[_key(item)] = value.get("value", value) if isinstance(value, dict) else value


def read_offline_run(path: Path, wait_s: float = 0.0) -> OfflineRun:
    """Parse a ``.wandb`` file (see ``find_offline_run``). ``run.finish()`` can return before wandb's
    writer process has flushed the file: ``wait_s`` > 0 re-reads until the exit record is there, for
    at most that long."""
    deadline = time.monotonic() + wait_s
    run = _read(path)
    while not run.finished and time.monotonic() < deadline:
        time.sleep(0.1)
        run = _read(path)
    return run


def _read(path: Path) -> OfflineRun:
    run = OfflineRun()
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            _config_items(record.run.config.update, run.config)
            run.tags = list(record.run.tags)
        elif kind == "config":
            _config_items(record.config.update, run.config)
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            run.finished = True
        elif kind == "alert":
            run.alerts.append({"title": record.alert.title, "text": record.alert.text,
                               "level": record.alert.level})
    return run


def find_offline_run(wandb_dir: Path) -> Path:
    """The newest ``offline-run-*/run-*.wandb`` under ``wandb_dir`` (a ``.../wandb`` directory)."""
    files = sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no offline-run-*/run-*.wandb under {wandb_dir}; was the run started with "
                                "logging.wandb_mode=offline and this logging.dir?")
    return files[-1]
