"""What a Ray cluster can give, checked before any actor of a worker group is created.

A request the cluster can never satisfy would otherwise leave actors pending forever: more CPUs or GPUs
per worker than any node has, more in total than the cluster has (counting what this run's other
groups already hold), all ranks on one node when no node is big enough, or NCCL without GPUs. Each
failure is a ``ResourceError`` with the numbers and the config keys to change.
"""

from __future__ import annotations

import ray

from system.workers.base import ResourceError, Resources


def cluster_capacity() -> tuple[dict[str, float], list[dict[str, float]]]:
    """The cluster's total resources and those of each live node."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return dict(ray.cluster_resources()), nodes


def check_capacity(role: str, n: int, res: Resources, *, held: dict[str, tuple[Resources, int]],
                   one_node: bool = False) -> None:
    """Raise ResourceError when ``n`` workers of ``res`` can never be scheduled on this cluster."""
    total, nodes = cluster_capacity()
    fields = f"cluster.{role}_cpus / cluster.{role}_gpus" if role in ("rollout", "reward", "learner") else \
        "the group's resources"
    for key, per in (("CPU", res.cpus), ("GPU", res.gpus)):
        if per <= 0:
            continue
        biggest = max((node.get(key, 0.0) for node in nodes), default=0.0)
        have = total.get(key, 0.0)
        taken = sum(_amount(r, key) * count for r, count in held.values())
        need = per * n
        if per > biggest + 1e-9:
            raise ResourceError(f"{role}: each worker asks for {per:g} {key}, but no node of the cluster has "
                                f"more than {biggest:g} {key}; lower {fields} or add bigger nodes")
        if one_node and need > biggest + 1e-9:
            raise ResourceError(f"{role}: {n} x {per:g} {key} = {need:g} {key} must fit on one node "
                                f"(cluster.learner_placement: STRICT_PACK) but the biggest node has {biggest:g}; "
                                "use learner_placement: PACK or fewer ranks")
        if need + taken > have + 1e-9:
            holders = ", ".join(f"{name}: {_amount(r, key) * count:g}" for name, (r, count) in held.items()) or "none"
            raise ResourceError(
                f"{role}: {n} workers x {per:g} {key} = {need:g} {key}, but the cluster has {have:g} {key} in total "
                f"and this run's other worker groups hold {taken:g} ({holders}); lower {fields} or the worker "
                f"count, or give the cluster more (cluster.num_cpus / num_gpus for a local cluster)"
            )


def _amount(res: Resources, key: str) -> float:
    return res.cpus if key == "CPU" else res.gpus


def check_gpu_backend(role: str, backend: str) -> None:
    """NCCL on a cluster without GPUs can only hang or crash later: refuse it now."""
    total, _ = cluster_capacity()
    if backend == "nccl" and total.get("GPU", 0.0) <= 0:
        raise ResourceError(f"{role}: cluster.learner_backend is 'nccl', which needs CUDA GPUs, but this Ray "
                            "cluster has no GPUs; set cluster.learner_backend: gloo and cluster.learner_gpus: 0 "
                            "to train on CPU, or run on GPU nodes")
