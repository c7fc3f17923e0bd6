"""In-process weight transport: learner and actors in one process (local debug mode, tests).

``publish`` stores a snapshot (a clone of every tensor, on its device), so later in-place updates of
the learner's parameters never reach the actors. Receivers share that snapshot read-only: ``receive``
returns a new dict of the same tensors, and (with ``verify``) re-hashes them, so a receiver that wrote
into a shared snapshot is caught at the next receive instead of silently corrupting the others.
Thread-safe: receivers in other threads wait on a condition variable for a new version.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import torch

from system.transports.base import (
    Deadline,
    WeightSyncTimeout,
    WeightTransport,
    check_publish,
    resolve_timeout,
    state_checksum,
    verify_state,
)
from system.types import WeightVersion


class InProcessTransport(WeightTransport):
    """Publish = snapshot in memory; receive = the latest snapshot (read-only, shared by receivers)."""

    name = "inprocess"

    def __init__(self, timeout_s: float = 300.0, verify: bool = True) -> None:
        self.timeout_s = resolve_timeout(timeout_s, timeout_s, self.name)
        self.verify = verify
        self._changed = threading.Condition()
        self._state: dict[str, torch.Tensor] | None = None
        self._version: WeightVersion | None = None

    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> WeightVersion:
        last = self._version.version if self._version is not None else None
        check_publish(state, version, last, self.name)
        snapshot = {name: tensor.detach().clone(memory_format=torch.contiguous_format)
                    for name, tensor in state.items()}
        published = WeightVersion(version, state_checksum(snapshot))
        with self._changed:
            self._state, self._version = snapshot, published
            self._changed.notify_all()
        return published

    def receive(
        self, timeout_s: float | None = None, min_version: int | None = None
    ) -> tuple[dict[str, torch.Tensor], WeightVersion]:
        deadline = Deadline(resolve_timeout(timeout_s, self.timeout_s, self.name))
        wanted = min_version or 0

        def ready() -> bool:
            return self._version is not None and self._version.version >= wanted

        with self._changed:
            if not self._changed.wait_for(ready, deadline.remaining()):
                latest = "none" if self._version is None else f"version {self._version.version}"
                raise WeightSyncTimeout(
                    f"inprocess transport: no weights with version >= {wanted} published within "
                    f"{deadline.seconds:g} s (timeout_s; latest: {latest}); is the learner publishing?"
                )
            state, version = self._state, self._version
        assert state is not None and version is not None
        if self.verify:
            verify_state(state, version, self.name, "the shared snapshot")
        return dict(state), version

    def __getstate__(self) -> dict:
        raise TypeError("InProcessTransport lives in one process and cannot be pickled; across processes use "
                        "the 'ray', 'broadcast' or 'filesystem' transport")
