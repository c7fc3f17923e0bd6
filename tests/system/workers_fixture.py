"""Plain worker classes for tests/system/test_workers.py: importable by Ray workers (the test puts this
directory on their PYTHONPATH), and free of heavy imports at module level."""

from __future__ import annotations

import os
import time
from typing import Any


class Counter:
    """A tiny stateful worker: a running total per instance, plus helpers the fault tests use."""

    def __init__(self, start: int = 0, *, scale: int = 1, fail_on_start: bool = False,
                 closed_dir: str | None = None) -> None:
        if fail_on_start:
            raise ValueError(f"refusing to start with start={start}")
        self.total = start
        self.scale = scale
        self.closed_dir = closed_dir

    def close(self) -> None:
        """Leaves a file named after this process in ``closed_dir`` (the worker group calls it on shutdown)."""
        if self.closed_dir is not None:
            with open(os.path.join(self.closed_dir, f"closed-{os.getpid()}-{self.total}"), "w"):
                pass

    def add(self, k: int) -> int:
        self.total += k * self.scale
        return self.total

    def square(self, x: int) -> int:
        return x * x * self.scale

    def torch_threads(self) -> tuple[int, str | None, str | None]:
        """torch's intra-op threads in this worker's process, OMP_NUM_THREADS, and another variable of the
        job's runtime env (kept when the actor adds its own)."""
        import torch

        return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"), os.environ.get("PYTHONPATH")

    def slow_square(self, x: int, delay_s: float) -> tuple[int, int]:
        """x * x after ``delay_s`` seconds, and the pid of the process that computed it."""
        time.sleep(delay_s)
        return x * x, os.getpid()

    def check_positive(self, x: int) -> int:
        if x < 0:
            raise ValueError(f"negative input {x}")
        return x

    def pid(self) -> int:
        return os.getpid()

    def env(self, *names: str) -> dict[str, Any]:
        return read_env(names)


class NeedsModel:
    """Refuses to start on a missing model path, as the rollout worker does: a bad input (CheckpointError)."""

    def __init__(self, path: str) -> None:
        if not os.path.isdir(path):
            from system.errors import CheckpointError

            raise CheckpointError(f"model path {path} does not exist: set model.path to a local checkpoint directory")


def read_env(names: tuple[str, ...]) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


class Rank:
    """A learner-like rank: joins the env:// torch.distributed group and all-reduces a tensor."""

    def __init__(self, backend: str = "gloo") -> None:
        import datetime

        import torch.distributed as dist

        dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=60))
        self.rank = dist.get_rank()

    def all_reduce(self, values: list[float]) -> tuple[int, int, list[float]]:
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64) * (self.rank + 1)
        dist.all_reduce(tensor)
        return self.rank, dist.get_world_size(), tensor.tolist()

    def env(self, *names: str) -> dict[str, Any]:
        return read_env(names)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        """Leave the group (idempotent: the worker group's shutdown calls it too)."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
