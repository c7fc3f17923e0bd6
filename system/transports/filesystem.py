"""Filesystem weight transport: safetensors files on storage every node mounts (NFS, a shared disk).

Layout of the directory (one publisher per directory; any number of readers)::

    weights-v0000000007.safetensors   one file per version; version and checksum in its metadata
    LATEST                            JSON {"version", "file", "checksum"}: the newest complete file

A reader never sees a half-written file: the publisher writes ``.<file>.<pid>.<rand>.tmp`` (hidden,
never matched by a reader), fsyncs it, renames it to its final name (``os.replace`` is atomic on POSIX
filesystems), and only then replaces ``LATEST`` the same way. Files older than the newest ``keep_last``
are deleted after the pointer moves; a reader that lost that race (the file it was pointed to is gone)
reads the pointer again. Readers check the checksum in the pointer, in the file, and of the tensors.
The first publish of a transport removes stale ``*.tmp`` files left by a publisher that crashed.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from system.transports.base import (
    Deadline,
    WeightSyncError,
    WeightSyncTimeout,
    WeightTransport,
    check_publish,
    resolve_timeout,
    state_checksum,
    verify_state,
)
from system.types import WeightVersion

POINTER = "LATEST"
_FILE = re.compile(r"^weights-v(\d{10})\.safetensors$")


def version_file(version: int) -> str:
    return f"weights-v{version:010d}.safetensors"


class FilesystemTransport(WeightTransport):
    """Publish = write a safetensors file and move the LATEST pointer; receive = read what it points to."""

    name = "filesystem"

    def __init__(self, directory: str | os.PathLike, keep_last: int = 2, timeout_s: float = 300.0,
                 verify: bool = True, fsync: bool = True, poll_s: float = 0.02) -> None:
        if keep_last < 1:
            raise ValueError(f"filesystem transport: keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.timeout_s = resolve_timeout(timeout_s, timeout_s, self.name)
        self.verify = verify
        self.fsync = fsync
        self.poll_s = poll_s
        self._last_published: int | None = None

    # ------------------------------------------------------------------------------------ publisher

    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> WeightVersion:
        check_publish(state, version, self._last_published, self.name)
        if self._last_published is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        tensors = _savable(state)
        published = WeightVersion(version, state_checksum(tensors))
        metadata = {"stabledrl.version": str(version), "stabledrl.checksum": published.checksum,
                    "stabledrl.names": json.dumps(list(tensors))}
        final = self.directory / version_file(version)
        tmp = self._temp_path(final.name)
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            self._durable(tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        self._write_pointer({"version": version, "file": final.name, "checksum": published.checksum})
        self._last_published = version
        self.prune()
        return published

    def prune(self) -> list[str]:
        """Delete version files older than the newest ``keep_last`` (never the one LATEST names)."""
        pointer = self._read_pointer()
        current = pointer["file"] if pointer else None
        files = sorted((int(m.group(1)), p) for p in self.directory.iterdir() if (m := _FILE.match(p.name)))
        removed = []
        for _, path in files[: max(0, len(files) - self.keep_last)]:
            if path.name != current:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    def _temp_path(self, final_name: str) -> Path:
        return self.directory / f".{final_name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"

    def _write_pointer(self, pointer: dict) -> None:
        tmp = self._temp_path(POINTER)
        try:
            tmp.write_text(json.dumps(pointer))
            self._durable(tmp)
            os.replace(tmp, self.directory / POINTER)
        finally:
            tmp.unlink(missing_ok=True)
        if self.fsync:  # make the rename itself durable
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _durable(self, path: Path) -> None:
        if self.fsync:
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())

    # ------------------------------------------------------------------------------------- receiver

    def receive(
        self, timeout_s: float | None = None, min_version: int | None = None
    ) -> tuple[dict[str, torch.Tensor], WeightVersion]:
        deadline = Deadline(resolve_timeout(timeout_s, self.timeout_s, self.name))
        wanted, seen, missing = min_version or 0, "none", ""
        while True:
            pointer = self._read_pointer()
            seen = pointer["version"] if pointer else "none"
            if pointer is not None and pointer["version"] >= wanted:
                try:
                    return self._load(pointer)
                except FileNotFoundError:  # pruned between reading the pointer and opening the file: retry
                    missing = f"; {POINTER} names {pointer['file']}, which does not exist"
            if deadline.expired():
                raise WeightSyncTimeout(
                    f"filesystem transport: no weights with version >= {wanted} in {self.directory} within "
                    f"{deadline.seconds:g} s (timeout_s; latest: {seen}{missing}); is the learner publishing "
                    "to this directory, and is it mounted on this node?"
                )
            time.sleep(min(self.poll_s, deadline.remaining()))

    def _read_pointer(self) -> dict | None:
        path = self.directory / POINTER
        try:
            pointer = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise WeightSyncError(f"filesystem transport: unreadable pointer {path} ({err})") from err
        ok = (isinstance(pointer, dict) and isinstance(pointer.get("version"), int)
              and isinstance(pointer.get("checksum"), str) and isinstance(pointer.get("file"), str)
              and pointer["file"] == version_file(pointer["version"]))
        if not ok:
            raise WeightSyncError(f"filesystem transport: malformed pointer {path}: {pointer!r}")
        return pointer

    def _load(self, pointer: dict) -> tuple[dict[str, torch.Tensor], WeightVersion]:
        path = self.directory / pointer["file"]
        expected = WeightVersion(pointer["version"], pointer["checksum"])
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                metadata = handle.metadata() or {}
                names = json.loads(metadata.get("stabledrl.names", "null")) or list(handle.keys())
                state = {name: handle.get_tensor(name) for name in names}
        except FileNotFoundError:
            raise
        except (SafetensorError, OSError, ValueError, KeyError) as err:
            raise WeightSyncError(f"filesystem transport: cannot read {path} ({err}); the file is corrupted "
                                  "or was not written by this transport") from err
        stamped = (metadata.get("stabledrl.version"), metadata.get("stabledrl.checksum"))
        if stamped != (str(expected.version), expected.checksum):
            raise WeightSyncError(f"filesystem transport: {path} carries version/checksum {stamped}, but "
                                  f"{POINTER} announced {expected}; the file was replaced or corrupted")
        if self.verify:
            verify_state(state, expected, self.name, str(path))
        return state, expected


def _savable(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that own their storage (safetensors refuses tensors that share memory,
    e.g. tied embeddings, or views into one flat buffer): clone those, pass the rest through."""
    out, seen = {}, set()
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        whole = storage.nbytes() == tensor.numel() * tensor.element_size()
        if storage.data_ptr() in seen or not whole:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out
