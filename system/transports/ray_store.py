"""Ray object-store weight transport: one ``ray.put`` per version, one ``ray.get`` per receiver.

A small named async actor (the *registry*, 0 CPUs) holds the latest ``(version, checksum, ObjectRef)``;
any process in the cluster finds it by name, so the transport object pickles to Ray actors as just the
registry's name, namespace and handle; only the process that built the transport kills the registry on
``close()``, so an actor closing its copy leaves the others working. The object is owned by the publishing process (Ray 2.56 removed
``ray.put(_owner=...)``): it is freed once the registry has moved on to a newer version and the last
receiver has dropped its borrow, and it is lost if the publisher dies (receivers then get a
WeightSyncError saying so; the learner's death stops the run anyway).

The payload is the tensors' raw bytes as numpy uint8 arrays (Ray serialises numpy out of band: one copy
into shared memory on put, zero-copy read-only views on get) plus a JSON layout. The receiver copies each
array once into a tensor it owns, then (with ``verify``) checks the checksum. ``detached=True`` keeps the
registry alive after its creator exits (it then needs ``close()`` or ``ray.kill``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError

from system.transports.base import (
    Deadline,
    WeightSyncError,
    WeightSyncTimeout,
    WeightTransport,
    byte_view,
    check_publish,
    dtype_name,
    parse_dtype,
    resolve_timeout,
    state_checksum,
    verify_state,
)
from system.types import WeightVersion


class _WeightRegistry:
    """Holds the latest published version; ``latest`` waits (async, without blocking publish) for one."""

    def __init__(self) -> None:
        self._latest: tuple[int, str, list[Any]] | None = None
        self._changed = asyncio.Event()

    async def publish(self, version: int, checksum: str, refs: list[Any]) -> int | None:
        """Record a new version (refs: ``[ObjectRef]``, wrapped so Ray does not resolve it).
        Returns None, or the newer version already held (the publish is then refused)."""
        if self._latest is not None and version <= self._latest[0]:
            return self._latest[0]
        self._latest = (version, checksum, refs)
        self._changed.set()
        self._changed = asyncio.Event()
        return None

    async def latest(self, min_version: int, timeout_s: float) -> tuple[int, str, list[Any]] | int | None:
        """The latest entry once its version is >= min_version; on timeout the latest version number
        (or None when nothing was ever published)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while self._latest is None or self._latest[0] < min_version:
            remaining = end - loop.time()
            if remaining <= 0:
                return None if self._latest is None else self._latest[0]
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self._latest


@functools.cache
def _registry_class() -> Any:
    return ray.remote(num_cpus=0, max_restarts=0)(_WeightRegistry)


class RayObjectStoreTransport(WeightTransport):
    """Publish = ``ray.put`` + tell the registry; receive = ask the registry, ``ray.get`` the object."""

    name = "ray"

    def __init__(self, actor_name: str = "stabledrl-weights", namespace: str | None = None,
                 timeout_s: float = 300.0, verify: bool = True, detached: bool = False) -> None:
        if not ray.is_initialized():
            raise WeightSyncError("ray transport: Ray is not initialized in this process; call ray.init() "
                                  "(cluster.mode: ray) before building it, or use the 'inprocess' transport")
        self.actor_name, self.namespace = actor_name, namespace
        self.timeout_s = resolve_timeout(timeout_s, timeout_s, self.name)
        self.verify = verify
        options: dict[str, Any] = {"name": actor_name, "namespace": namespace, "get_if_exists": True}
        if detached:
            options["lifetime"] = "detached"
        self._registry = _registry_class().options(**options).remote()
        self._owns_registry = True  # this process built it; unpickled copies (in actors) do not own it
        self._last_published: int | None = None

    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> WeightVersion:
        check_publish(state, version, self._last_published, self.name)
        registry = self._live()
        published = WeightVersion(version, state_checksum(state))
        ref = ray.put(_to_payload(state))
        refused = self._call(registry.publish.remote(version, published.checksum, [ref]),
                             Deadline(self.timeout_s), "publishing")
        if refused is not None:
            raise ValueError(f"ray transport: registry '{self.actor_name}' already holds version {refused}; "
                             f"versions must increase (got {version}); is another learner publishing to it?")
        self._last_published = version
        return published

    def receive(
        self, timeout_s: float | None = None, min_version: int | None = None
    ) -> tuple[dict[str, torch.Tensor], WeightVersion]:
        deadline = Deadline(resolve_timeout(timeout_s, self.timeout_s, self.name))
        wanted = min_version or 0
        entry = self._call(self._live().latest.remote(wanted, deadline.seconds), deadline, "waiting for weights")
        if not isinstance(entry, tuple):
            latest = "none" if entry is None else f"version {entry}"
            raise WeightSyncTimeout(
                f"ray transport: no weights with version >= {wanted} published to registry '{self.actor_name}' "
                f"within {deadline.seconds:g} s (timeout_s; latest: {latest}); is the learner publishing?")
        version, checksum, (ref,) = entry
        payload = self._call(ref, deadline, f"fetching version {version}")
        expected = WeightVersion(version, checksum)
        state = _from_payload(payload)
        if self.verify:
            verify_state(state, expected, self.name, f"object {ref.hex()}")
        return state, expected

    def close(self) -> None:
        """Drop this side's handle; the process that built the transport also kills the registry."""
        if self._registry is not None and self._owns_registry and ray.is_initialized():
            ray.kill(self._registry)
        self._registry = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_owns_registry": False, "_last_published": None}

    def _live(self) -> Any:
        if self._registry is None:
            raise WeightSyncError(f"ray transport: this transport (registry '{self.actor_name}') was closed")
        return self._registry

    def _call(self, ref: Any, deadline: Deadline, what: str) -> Any:
        try:
            # the registry answers within deadline; the grace covers scheduling and transfer
            return ray.get(ref, timeout=deadline.remaining() + 10.0)
        except GetTimeoutError as err:
            raise WeightSyncTimeout(f"ray transport: {what} did not complete within {deadline.seconds:g} s "
                                    "(timeout_s); is the object store overloaded?") from err
        except RayActorError as err:
            raise WeightSyncError(f"ray transport: the weight registry actor '{self.actor_name}' is gone "
                                  f"while {what} ({err}); it lives as long as the process that created it "
                                  "(use detached=True to outlive it)") from err
        except ObjectLostError as err:
            raise WeightSyncError(f"ray transport: the weights were lost while {what} ({type(err).__name__}); "
                                  "their owner, the publishing process, probably died") from err


def _to_payload(state: Mapping[str, torch.Tensor]) -> tuple[str, list[np.ndarray]]:
    """JSON layout + one uint8 numpy array per tensor (views of CPU tensors: ray.put copies them)."""
    layout = [[name, dtype_name(t.dtype), list(t.shape)] for name, t in state.items()]
    arrays = [byte_view(t).cpu().numpy() for t in state.values()]
    return json.dumps(layout), arrays


def _from_payload(payload: Any) -> dict[str, torch.Tensor]:
    """Tensors this process owns (one copy out of the read-only shared-memory arrays)."""
    try:
        raw_layout, arrays = payload
        layout = json.loads(raw_layout)
        if len(layout) != len(arrays):
            raise ValueError(f"{len(layout)} layout entries for {len(arrays)} arrays")
        state = {}
        for (name, dtype_str, shape), array in zip(layout, arrays, strict=True):
            dtype = parse_dtype(dtype_str, "ray")
            flat = torch.empty(array.nbytes, dtype=torch.uint8, device="cpu")
            flat.numpy()[:] = array.reshape(-1).view(np.uint8)
            state[name] = (flat if dtype == torch.uint8 else flat.view(dtype)).reshape(shape)
    except WeightSyncError:
        raise
    except (TypeError, ValueError, RuntimeError) as err:
        raise WeightSyncError(f"ray transport: malformed payload ({err})") from err
    return state
