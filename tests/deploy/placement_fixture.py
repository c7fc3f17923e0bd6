"""Plain worker classes for tests/deploy/test_multinode.py: each reports the Ray node it runs on; the
rank class also joins the learner ranks' env:// torch.distributed group (gloo). Importable by Ray
workers (the test puts this directory on their PYTHONPATH); no heavy imports at module level."""

from __future__ import annotations

import os


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class Where:
    """A rollout- or reward-like worker: where does it run?"""

    def node(self) -> str:
        return _node_id()


class NodeRank:
    """A learner-like rank: joins the env:// group its worker group set up, then reports its node, its
    rendezvous variables and an all-reduce over the group."""

    def __init__(self) -> None:
        import datetime

        import torch.distributed as dist

        dist.init_process_group("gloo", init_method="env://", timeout=datetime.timedelta(seconds=60))

    def report(self) -> dict[str, object]:
        import torch
        import torch.distributed as dist

        total = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(total)  # the sum of rank + 1 over the group: gloo traffic between the "nodes"
        env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        return {"node": _node_id(), "rank": dist.get_rank(), "sum": float(total.item()), **env}

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
