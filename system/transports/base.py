"""The weight-transport interface and what its implementations share.

Owns: ``WeightTransport`` (publish on the learner side, receive on the actor side, close), the state-dict
checksum every transport carries in its ``WeightVersion``, the byte layout used by the transports that
ship one flat byte stream (metadata first, then the bytes), the errors, and the deadline arithmetic.

A checksum is xxh3-128 over the tensors in sorted-name order; for each tensor it hashes a JSON header
(name, dtype, shape) and then the raw bytes (bf16 and other dtypes without a numpy twin are hashed as
bytes, so no dtype conversion happens). It is deterministic across processes and hosts of the same
endianness, and it is over the bytes, so ``-0.0`` and ``0.0`` (or two NaN payloads) differ.
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import xxhash

from system.types import WeightVersion

CHECKSUM_PREFIX = "xxh3_128:"
LAYOUT_ALIGN = 64  # bytes; every tensor starts at a multiple of this, so byte views cast to any dtype

_DTYPES: dict[str, torch.dtype] = {
    str(value).removeprefix("torch."): value for value in vars(torch).values() if isinstance(value, torch.dtype)
}


class WeightSyncError(RuntimeError):
    """A weight transfer that failed: bad input, a corrupted payload, a dead peer."""


class WeightSyncTimeout(WeightSyncError, TimeoutError):
    """A weight transfer that did not complete within its timeout."""


class WeightTransport(ABC):
    """Moves versioned state dicts from one publisher (the learner) to any number of receivers (actors).

    ``receive`` returns the latest published version (at least ``min_version``), waiting at most
    ``timeout_s`` (None: the transport's default timeout; nothing here ever waits forever).
    """

    name: str = "?"

    @abstractmethod
    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> WeightVersion:
        """Make ``state`` (a full, gathered state dict) available as ``version``; returns its WeightVersion."""

    @abstractmethod
    def receive(
        self, timeout_s: float | None = None, min_version: int | None = None
    ) -> tuple[dict[str, torch.Tensor], WeightVersion]:
        """The latest published state and its version; raises WeightSyncTimeout when none arrives in time."""

    def close(self) -> None:  # noqa: B027 - optional hook; most transports hold nothing to release
        """Release what this side holds (sockets, actors). Idempotent."""

    def __enter__(self) -> WeightTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------- checks


def check_publish(state: Mapping[str, torch.Tensor], version: int, last: int | None, transport: str) -> None:
    """Reject what no transport can ship: non-tensors, non-str names, a version that does not increase."""
    if not isinstance(state, Mapping):
        raise TypeError(f"{transport} transport: publish expects a dict of name -> tensor, got {type(state).__name__}")
    for name, tensor in state.items():
        if not isinstance(name, str):
            raise TypeError(f"{transport} transport: state dict key {name!r} is not a str")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{transport} transport: state['{name}'] is a {type(tensor).__name__}, not a tensor")
        if tensor.layout != torch.strided:
            raise WeightSyncError(f"{transport} transport: state['{name}'] has layout {tensor.layout}; "
                                  "publish dense tensors (call .to_dense() first)")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"{transport} transport: version must be an int >= 0, got {version!r}")
    if last is not None and version <= last:
        raise ValueError(f"{transport} transport: versions must increase, but version {version} was published "
                         f"after version {last}; publish version {last + 1} or higher")


def resolve_timeout(timeout_s: float | None, default_s: float, transport: str) -> float:
    """The timeout to use: the call's, else the transport's default; both must be positive and finite."""
    value = default_s if timeout_s is None else timeout_s
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{transport} transport: timeout_s must be a positive number of seconds, got {value!r}")
    return float(value)


class Deadline:
    """A point in (monotonic) time; ``remaining()`` is never negative."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end


# ---------------------------------------------------------------------------------------------- checksum


def byte_view(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat contiguous uint8 tensor on its device (a view when already contiguous).

    [*shape] dtype -> [numel * element_size] uint8.
    """
    flat = tensor.detach().contiguous().reshape(-1)
    return flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)


def state_checksum(state: Mapping[str, torch.Tensor]) -> str:
    """Deterministic checksum over names, dtypes, shapes and bytes (sorted names), ``xxh3_128:<hex>``."""
    digest = xxhash.xxh3_128()
    for name in sorted(state):
        tensor = state[name]
        digest.update(json.dumps([name, dtype_name(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(byte_view(tensor).cpu().numpy())
    return CHECKSUM_PREFIX + digest.hexdigest()


def verify_state(state: Mapping[str, torch.Tensor], expected: WeightVersion, transport: str, where: str = "") -> None:
    """Raise WeightSyncError when the received tensors do not hash to the published checksum."""
    actual = state_checksum(state)
    if actual != expected.checksum:
        place = f" ({where})" if where else ""
        raise WeightSyncError(
            f"{transport} transport: checksum mismatch for version {expected.version}{place}: published "
            f"{expected.checksum}, received {actual}; the payload was corrupted or modified after publishing"
        )


# ------------------------------------------------------------------------------------------------ layout


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: object, transport: str) -> torch.dtype:
    if not isinstance(name, str) or name not in _DTYPES:
        raise WeightSyncError(f"{transport} transport: unknown dtype {name!r} in the received metadata")
    return _DTYPES[name]


@dataclass(frozen=True)
class TensorMeta:
    """Where one tensor lives in a flat byte stream: bytes [offset, offset + nbytes)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def plan_layout(state: Mapping[str, torch.Tensor], align: int = LAYOUT_ALIGN) -> tuple[list[TensorMeta], int]:
    """Lay the tensors out back to back (in the dict's order), each start aligned to ``align`` bytes.

    Returns the metas and the total byte length of the stream (the end of the last tensor).
    """
    metas, offset, total = [], 0, 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        metas.append(TensorMeta(name, dtype_name(tensor.dtype), tuple(tensor.shape), offset, nbytes))
        total = offset + nbytes
        offset = -(-total // align) * align
    return metas, total


def layout_to_json(metas: list[TensorMeta], total: int, extra: dict[str, object]) -> bytes:
    tensors = [[m.name, m.dtype, list(m.shape), m.offset, m.nbytes] for m in metas]
    return json.dumps({**extra, "total_bytes": total, "tensors": tensors}).encode()


def layout_from_json(raw: bytes, transport: str) -> tuple[list[TensorMeta], int, dict[str, object]]:
    """Parse and check received metadata (untrusted: every field is validated against the others)."""
    try:
        doc = json.loads(raw.decode())
        total, rows = doc.pop("total_bytes"), doc.pop("tensors")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError, TypeError) as err:
        raise WeightSyncError(f"{transport} transport: unreadable metadata ({err})") from err
    if not isinstance(total, int) or total < 0 or not isinstance(rows, list):
        raise WeightSyncError(f"{transport} transport: metadata total_bytes={total!r} / tensors is malformed")
    metas = [_parse_meta_row(row, total, transport) for row in rows]
    return metas, total, doc


def _parse_meta_row(row: object, total: int, transport: str) -> TensorMeta:
    try:
        name, dtype, shape, offset, nbytes = row  # type: ignore[misc]
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as err:
        raise WeightSyncError(f"{transport} transport: malformed tensor entry {row!r} in metadata") from err
    element = parse_dtype(dtype, transport).itemsize
    ok = (isinstance(name, str) and isinstance(offset, int) and isinstance(nbytes, int) and min(shape, default=0) >= 0
          and nbytes == math.prod(shape) * element and offset >= 0 and offset % element == 0
          and offset + nbytes <= total)
    if not ok:
        raise WeightSyncError(f"{transport} transport: inconsistent tensor entry {row!r} in metadata "
                              f"(stream of {total} bytes)")
    return TensorMeta(name, dtype, shape, offset, nbytes)


def tensor_from_bytes(flat: torch.Tensor, meta: TensorMeta) -> torch.Tensor:
    """The tensor ``meta`` describes, as a view into the uint8 stream ``flat`` (no copy)."""
    dtype = _DTYPES[meta.dtype]
    raw = flat[meta.offset : meta.offset + meta.nbytes]
    return (raw if dtype == torch.uint8 else raw.view(dtype)).reshape(meta.shape)
