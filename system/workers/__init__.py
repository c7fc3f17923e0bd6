"""Worker groups: the plain worker classes of one role, run in this process or as Ray actors.

``make_worker_group(role, cls, n, cfg.cluster, *args, **kwargs)`` is the one place the system chooses:
``cluster.mode: local`` gives a ``LocalWorkerGroup`` (no Ray imported, breakpoints work), ``ray`` a
``RayWorkerGroup`` (system/workers/ray_group.py; connect first with ``system.ray_cluster.connect``).
Resources per worker come from the config by role (``rollout``, ``reward``, ``learner``); the
``learner`` role is *distributed*: its ranks get a placement group and the env:// variables of one
torch.distributed group, and never restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from system.config import ClusterConfig
from system.workers.base import (
    LocalFuture,
    LocalWorkerGroup,
    MapFuture,
    ResourceError,
    Resources,
    WorkerCallError,
    WorkerDiedError,
    WorkerFuture,
    WorkerGroup,
    WorkerGroupError,
    WorkerStartError,
    wait,
)

__all__ = [
    "ROLES",
    "LocalFuture",
    "LocalWorkerGroup",
    "MapFuture",
    "ResourceError",
    "Resources",
    "WorkerCallError",
    "WorkerDiedError",
    "WorkerFuture",
    "WorkerGroup",
    "WorkerGroupError",
    "WorkerStartError",
    "make_worker_group",
    "role_resources",
    "wait",
]

ROLES = ("rollout", "reward", "learner")


def role_resources(cfg: ClusterConfig, role: str) -> Resources:
    """CPUs and GPUs per worker of ``role`` from ``cluster.<role>_cpus`` / ``cluster.<role>_gpus``."""
    if role not in ROLES:
        raise ValueError(f"no resources configured for role {role!r} (configured: {', '.join(ROLES)}); "
                         "pass resources=Resources(cpus=..., gpus=...)")
    return Resources(cpus=getattr(cfg, f"{role}_cpus"), gpus=getattr(cfg, f"{role}_gpus"))


def _check_local_backend(role: str, backend: str) -> None:
    import torch

    if backend == "nccl" and not torch.cuda.is_available():
        raise ResourceError(f"{role}: cluster.learner_backend is 'nccl', which needs CUDA GPUs, but this machine "
                            "has none (torch.cuda.is_available() is False); set cluster.learner_backend: gloo "
                            "and cluster.learner_gpus: 0 to train on CPU")


def make_worker_group(role: str, cls: type, n: int, cfg: ClusterConfig, *args: Any,
                      resources: Resources | None = None, distributed: bool | None = None,
                      index_kwarg: str | None = None, per_worker_kwargs: Sequence[dict[str, Any]] | None = None,
                      max_concurrency: int = 1, **kwargs: Any) -> WorkerGroup:
    """``n`` workers ``cls(*args, **kwargs, **per_worker_kwargs[i])`` of ``role``, local or Ray by ``cfg.mode``.

    In Ray mode, connects first (``system.ray_cluster.connect(cfg)``) unless this process already is.

    Args:
        resources: per worker; default ``role_resources(cfg, role)``.
        distributed: learner ranks (placement group, env:// variables, no restarts); default ``role == "learner"``.
        index_kwarg: pass each worker its index under this keyword (e.g. ``"worker_index"``).
        per_worker_kwargs: extra constructor keywords of each worker (a list of n dicts).
        max_concurrency: Ray only: how many calls one actor runs at once (threads; 1 = one after another).
    """
    distributed = role == "learner" if distributed is None else distributed
    if index_kwarg is not None:
        base = per_worker_kwargs if per_worker_kwargs is not None else [{} for _ in range(n)]
        if len(base) != n:
            raise ValueError(f"{role}: per_worker_kwargs has {len(base)} entries for {n} workers")
        per_worker_kwargs = [{**extra, index_kwarg: i} for i, extra in enumerate(base)]
    if distributed and cfg.mode == "local":
        _check_local_backend(role, cfg.learner_backend)
    if cfg.mode == "local":
        return LocalWorkerGroup(role, cls, n, *args, distributed=distributed, per_worker_kwargs=per_worker_kwargs,
                                **kwargs)
    from system import ray_cluster
    from system.workers.ray_group import RayWorkerGroup

    ray_cluster.connect(cfg)
    return RayWorkerGroup(role, cls, n, cfg, *args, resources=resources or role_resources(cfg, role),
                          distributed=distributed, per_worker_kwargs=per_worker_kwargs,
                          max_concurrency=max_concurrency, **kwargs)
