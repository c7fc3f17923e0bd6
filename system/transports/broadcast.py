"""torch.distributed weight transport: rank 0 (the learner) broadcasts to ranks 1..N (the actors).

The group is formed for the transport alone (``init_weight_group``): its own TCPStore at ``init_method``
(``tcp://HOST:PORT``, HOST being the sender's address) and a ProcessGroupGloo (device "cpu") or
ProcessGroupNCCL (device "cuda") built directly on it, so it never touches the default process group
that the learner ranks use for DeepSpeed. World size = 1 sender + N receivers.

One publish is, on the wire: a header ``int64[2] = (MAGIC, metadata bytes)``; the metadata (JSON:
version, checksum, byte layout of every tensor); then the state as one flat byte stream cut into
buckets of ``bucket_mb``. The sender packs bucket i+1 into a second staging buffer while bucket i is in
flight; receivers broadcast straight into one flat buffer of the whole state (no staging copy) and
return tensors that are views into it (they share one storage: clone before saving with safetensors).
Receivers check the checksum.

Every collective waits at most ``timeout_s`` (a receiver's first wait, for the header, uses the
receive's own timeout): a broadcast with no timeout hangs forever when a peer dies. After a timeout or
peer failure the group is left mid-collective, so the transport refuses further use; make a new one.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import torch
import torch.distributed as dist

from system.transports.base import (
    Deadline,
    TensorMeta,
    WeightSyncError,
    WeightSyncTimeout,
    WeightTransport,
    byte_view,
    check_publish,
    layout_from_json,
    layout_to_json,
    plan_layout,
    resolve_timeout,
    state_checksum,
    tensor_from_bytes,
    verify_state,
)
from system.types import WeightVersion

MAGIC = 0x5344524C57  # "SDRLW"
MAX_METADATA_BYTES = 1 << 30


def _backend(device: str) -> str:
    if device == "cpu":
        return "gloo"
    if device == "cuda":
        if not (torch.cuda.is_available() and dist.is_nccl_available()):
            raise WeightSyncError(
                "broadcast transport: device 'cuda' (NCCL backend) needs CUDA GPUs and a torch built with "
                f"NCCL, but torch.cuda.is_available()={torch.cuda.is_available()} and "
                f"dist.is_nccl_available()={dist.is_nccl_available()} here; use device 'cpu' (gloo)"
            )
        return "nccl"
    raise ValueError(f"broadcast transport: device must be 'cpu' (gloo) or 'cuda' (NCCL), got {device!r}")


def init_weight_group(init_method: str, rank: int, world_size: int, device: str = "cpu",
                      timeout_s: float = 300.0) -> tuple[Any, Any]:
    """Form the transport's own process group; returns (group, store). Blocks until all ranks join.

    ``init_method``: ``tcp://HOST:PORT``; rank 0 listens on PORT, the others connect to HOST:PORT.
    """
    backend = _backend(device)
    if not 0 <= rank < world_size or world_size < 2:
        raise ValueError(f"broadcast transport: need world_size >= 2 (1 sender + receivers) and 0 <= rank < "
                         f"world_size, got rank={rank}, world_size={world_size}")
    parsed = urlparse(init_method)
    if parsed.scheme != "tcp" or not parsed.hostname or not parsed.port:
        raise ValueError(f"broadcast transport: init_method must look like tcp://127.0.0.1:29555, got {init_method!r}")
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        store = dist.TCPStore(parsed.hostname, parsed.port, world_size, rank == 0, timeout=timeout)
        prefixed = dist.PrefixStore("stabledrl/weights", store)
        if backend == "gloo":
            group = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
        else:
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            group = dist.ProcessGroupNCCL(prefixed, rank, world_size, options)
    except (RuntimeError, OSError) as err:  # DistNetworkError / DistStoreError are RuntimeErrors
        raise WeightSyncError(
            f"broadcast transport: rank {rank}/{world_size} could not form the weight group at {init_method} "
            f"within {timeout_s:g} s ({err}); check that every rank uses the same init_method and world "
            "size, that the sender's port is free and reachable, and that all ranks start"
        ) from err
    return group, store


class BroadcastTransport(WeightTransport):
    """Rank 0 publishes, every other rank receives each publish (a collective: all must take part)."""

    name = "broadcast"

    def __init__(self, init_method: str, rank: int, world_size: int, device: str = "cpu",
                 bucket_mb: float = 64.0, timeout_s: float = 300.0, verify: bool = True) -> None:
        if not (math.isfinite(bucket_mb) and bucket_mb > 0):
            raise ValueError(f"broadcast transport: bucket_mb must be > 0, got {bucket_mb!r}")
        self.timeout_s = resolve_timeout(timeout_s, timeout_s, self.name)
        self.rank, self.world_size, self.verify = rank, world_size, verify
        self.bucket_bytes = max(1, int(bucket_mb * 2**20))
        self.backend = _backend(device)
        self.device = torch.device("cpu") if device == "cpu" else torch.device("cuda", torch.cuda.current_device())
        self._group, self._store = init_weight_group(init_method, rank, world_size, device, self.timeout_s)
        self._broken: str | None = None
        self._last_published: int | None = None

    # ------------------------------------------------------------------------------------------ sender

    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> WeightVersion:
        if self.rank != 0:
            raise WeightSyncError(f"broadcast transport: rank {self.rank} is a receiver; only rank 0 publishes")
        check_publish(state, version, self._last_published, self.name)
        metas, total = plan_layout(state)
        published = WeightVersion(version, state_checksum(state))
        metadata = layout_to_json(metas, total, {"version": version, "checksum": published.checksum,
                                                 "bucket_bytes": self.bucket_bytes})
        deadline = Deadline(self.timeout_s)
        self._broadcast(torch.tensor([MAGIC, len(metadata)], dtype=torch.int64, device=self.device),
                        deadline, "header")
        raw = torch.frombuffer(bytearray(metadata), dtype=torch.uint8).to(self.device)
        self._broadcast(raw, Deadline(self.timeout_s), "metadata")
        self._send_buckets(state, metas, total)
        self._last_published = version
        return published

    def _send_buckets(self, state: Mapping[str, torch.Tensor], metas: list[TensorMeta], total: int) -> None:
        count = -(-total // self.bucket_bytes)
        staging = [torch.empty(min(self.bucket_bytes, total), dtype=torch.uint8, device=self.device)
                   for _ in range(min(2, count))]
        sources = [byte_view(state[m.name]) for m in metas]
        pending = None
        for index in range(count):
            start = index * self.bucket_bytes
            bucket = staging[index % 2][: min(self.bucket_bytes, total - start)]
            self._pack_bucket(bucket, start, metas, sources)
            if pending is not None:
                self._wait(*pending)
            pending = (self._issue(bucket), Deadline(self.timeout_s), f"bucket {index} of {count}")
        if pending is not None:
            self._wait(*pending)

    def _pack_bucket(self, bucket: torch.Tensor, start: int, metas: list[TensorMeta],
                     sources: list[torch.Tensor]) -> None:
        """Copy the stream bytes [start, start + len(bucket)) into ``bucket`` (alignment gaps left as is)."""
        end = start + bucket.numel()
        for meta, source in zip(metas, sources):
            lo, hi = max(meta.offset, start), min(meta.offset + meta.nbytes, end)
            if lo < hi:
                bucket[lo - start : hi - start].copy_(source[lo - meta.offset : hi - meta.offset])

    # ---------------------------------------------------------------------------------------- receiver

    def receive(
        self, timeout_s: float | None = None, min_version: int | None = None
    ) -> tuple[dict[str, torch.Tensor], WeightVersion]:
        """The next broadcast (skipping versions below ``min_version``); waits up to ``timeout_s`` for it."""
        if self.rank == 0:
            raise WeightSyncError("broadcast transport: rank 0 is the sender; receive on ranks 1..N")
        deadline = Deadline(resolve_timeout(timeout_s, self.timeout_s, self.name))
        while True:
            state, version = self._receive_one(deadline)
            if version.version >= (min_version or 0):
                return state, version

    def _receive_one(self, deadline: Deadline) -> tuple[dict[str, torch.Tensor], WeightVersion]:
        header = torch.zeros(2, dtype=torch.int64, device=self.device)
        self._broadcast(header, deadline, "header (waiting for the sender to publish)")
        magic, size = header.tolist()
        if magic != MAGIC or not 0 < size <= MAX_METADATA_BYTES:
            self._broken = f"bad header {header.tolist()}"
            raise WeightSyncError(f"broadcast transport: rank {self.rank} got a bad header {header.tolist()}; "
                                  "another collective is using this group, or the ranks are out of step")
        raw = torch.empty(size, dtype=torch.uint8, device=self.device)
        self._broadcast(raw, Deadline(self.timeout_s), "metadata")
        metas, total, extra = layout_from_json(raw.cpu().numpy().tobytes(), self.name)
        bucket_bytes = extra.get("bucket_bytes")
        if not isinstance(bucket_bytes, int) or bucket_bytes <= 0:
            raise WeightSyncError(f"broadcast transport: bad bucket_bytes {bucket_bytes!r} in metadata")
        flat = torch.empty(total, dtype=torch.uint8, device=self.device)
        count, pending = -(-total // bucket_bytes), None
        for index in range(count):
            work = self._issue(flat[index * bucket_bytes : (index + 1) * bucket_bytes])
            if pending is not None:
                self._wait(*pending)
            pending = (work, Deadline(self.timeout_s), f"bucket {index} of {count}")
        if pending is not None:
            self._wait(*pending)
        state = {meta.name: tensor_from_bytes(flat, meta) for meta in metas}
        expected = WeightVersion(int(extra["version"]), str(extra["checksum"]))  # type: ignore[call-overload]
        if self.verify:
            verify_state(state, expected, self.name, f"rank {self.rank}")
        return state, expected

    # --------------------------------------------------------------------------------------- collectives

    def _broadcast(self, tensor: torch.Tensor, deadline: Deadline, what: str) -> None:
        self._wait(self._issue(tensor), deadline, what)

    def _issue(self, tensor: torch.Tensor) -> Any:
        if self._broken is not None:
            raise WeightSyncError(f"broadcast transport: rank {self.rank}'s weight group is unusable after "
                                  f"{self._broken}; close it and form a new group")
        if self._group is None:
            raise WeightSyncError("broadcast transport: this transport was closed")
        options = dist.BroadcastOptions()
        options.rootRank, options.rootTensor = 0, 0
        return self._group.broadcast([tensor], options)

    def _wait(self, work: Any, deadline: Deadline, what: str) -> None:
        """Wait for one collective, at most until ``deadline``; any failure leaves the group broken."""
        try:
            if self.backend == "gloo":
                work.wait(datetime.timedelta(seconds=max(deadline.remaining(), 1e-3)))
            else:  # NCCL's wait() only orders streams: poll completion on the host to enforce the deadline
                while not work.is_completed():
                    if deadline.expired():
                        raise RuntimeError("timed out")
                    time.sleep(0.0005)
                work.wait()
        except RuntimeError as err:
            timed_out = "timed out" in str(err).lower() or deadline.expired()
            self._broken = f"a {'timeout' if timed_out else 'failure'} on the {what}"
            if self.backend == "nccl" and hasattr(self._group, "abort"):
                self._group.abort()
            if timed_out:
                raise WeightSyncTimeout(
                    f"broadcast transport: rank {self.rank}/{self.world_size} timed out after {deadline.seconds:g} s "
                    f"(timeout_s) on the {what}; a peer is missing, dead or slower than the timeout") from err
            raise WeightSyncError(f"broadcast transport: rank {self.rank} failed on the {what} ({err}); "
                                  "a peer probably died") from err

    def close(self) -> None:
        self._group, self._store = None, None

    def __getstate__(self) -> dict:
        raise TypeError("BroadcastTransport holds a live process group and cannot be pickled; send the "
                        "TransportOptions to each process and call build_transport(options, rank) there")
