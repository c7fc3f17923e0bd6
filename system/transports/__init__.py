"""Weight transports: how the learner's new weights reach the rollout actors, with a version and a checksum.

One interface (``WeightTransport``: publish / receive / close) and four implementations, chosen by name:

- ``inprocess``: a snapshot in memory (local debug mode, one process);
- ``ray``: one ``ray.put`` per version, found through a small named registry actor;
- ``broadcast``: torch.distributed broadcast in buckets over a group of its own (gloo / NCCL);
- ``filesystem``: safetensors files with an atomically moved LATEST pointer (shared storage).

The learner gathers ZeRO-3 shards before publishing: every transport takes a full state dict. Build one
from ``TransportOptions`` with ``build_transport(options, rank)``; ``rank`` only matters for
``broadcast`` (0 = the sender, 1..num_receivers = the receivers). Each implementation module is imported
only when its transport is built (``ray`` is not imported for a local run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from system.transports.base import (
    WeightSyncError,
    WeightSyncTimeout,
    WeightTransport,
    state_checksum,
    verify_state,
)

__all__ = [
    "TRANSPORTS",
    "TransportOptions",
    "WeightSyncError",
    "WeightSyncTimeout",
    "WeightTransport",
    "build_transport",
    "state_checksum",
    "verify_state",
]

TransportKind = Literal["inprocess", "ray", "broadcast", "filesystem"]


@dataclass(frozen=True)
class TransportOptions:
    """Everything any transport needs; each reads only its own fields (and the shared ones).

    Shared:
        kind: which transport.
        timeout_s: the longest any single wait may take (a receive, a collective, a registry call).
        verify: receivers re-hash what they got and raise on a checksum mismatch.
    broadcast:
        init_method: ``tcp://HOST:PORT`` of the sender (rank 0); all ranks use the same value.
        num_receivers: N; the group has 1 + N ranks.
        device: "cpu" (gloo) or "cuda" (NCCL; fails fast on a machine without GPUs).
        bucket_mb: size of one broadcast bucket, in MiB.
    filesystem:
        directory: a directory every node mounts; keep_last: versions kept on disk;
        fsync: make each file durable before the pointer moves to it.
    ray:
        ray_actor_name / ray_namespace: where the registry actor is found; ray_detached: let it
        outlive the process that created it.
    """

    kind: TransportKind = "inprocess"
    timeout_s: float = 300.0
    verify: bool = True
    init_method: str = "tcp://127.0.0.1:29555"
    num_receivers: int = 1
    device: Literal["cpu", "cuda"] = "cpu"
    bucket_mb: float = 64.0
    directory: str | None = None
    keep_last: int = 2
    fsync: bool = True
    ray_actor_name: str = "stabledrl-weights"
    ray_namespace: str | None = None
    ray_detached: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.kind in TRANSPORTS, "kind", f"one of {sorted(TRANSPORTS)}"),
            (self.timeout_s > 0, "timeout_s", "> 0 seconds"),
            (self.num_receivers >= 1, "num_receivers", ">= 1"),
            (self.device in ("cpu", "cuda"), "device", "'cpu' (gloo) or 'cuda' (NCCL)"),
            (self.bucket_mb > 0, "bucket_mb", "> 0 MiB (e.g. 64)"),
            (self.keep_last >= 1, "keep_last", ">= 1 (2 leaves readers time to finish)"),
            (self.kind != "filesystem" or bool(self.directory), "directory",
             "a shared directory path for the filesystem transport"),
        ]
        for ok, field, allowed in checks:
            if not ok:
                raise ValueError(f"TransportOptions.{field}={getattr(self, field)!r} is invalid: use {allowed}")


def _inprocess(options: TransportOptions, rank: int) -> WeightTransport:
    from system.transports.inprocess import InProcessTransport

    return InProcessTransport(timeout_s=options.timeout_s, verify=options.verify)


def _ray(options: TransportOptions, rank: int) -> WeightTransport:
    from system.transports.ray_store import RayObjectStoreTransport

    return RayObjectStoreTransport(options.ray_actor_name, options.ray_namespace, options.timeout_s,
                                   options.verify, options.ray_detached)


def _broadcast(options: TransportOptions, rank: int) -> WeightTransport:
    from system.transports.broadcast import BroadcastTransport

    return BroadcastTransport(options.init_method, rank, 1 + options.num_receivers, options.device,
                              options.bucket_mb, options.timeout_s, options.verify)


def _filesystem(options: TransportOptions, rank: int) -> WeightTransport:
    from system.transports.filesystem import FilesystemTransport

    assert options.directory is not None  # checked in TransportOptions
    return FilesystemTransport(options.directory, options.keep_last, options.timeout_s, options.verify,
                               options.fsync)


TRANSPORTS: dict[str, Callable[[TransportOptions, int], WeightTransport]] = {
    "inprocess": _inprocess,
    "ray": _ray,
    "broadcast": _broadcast,
    "filesystem": _filesystem,
}


def build_transport(options: TransportOptions, rank: int = 0) -> WeightTransport:
    """The transport ``options.kind`` names, for this process (``rank``: broadcast only; 0 = sender).

    In-process and broadcast transports cannot be pickled: build them in the process that uses them.
    Ray and filesystem transports pickle, so one built by the driver can be handed to Ray actors.
    """
    return TRANSPORTS[options.kind](options, rank)
