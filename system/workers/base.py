"""The worker-group interface, its in-process implementation, the futures and the errors.

A worker group runs ``n`` instances of one plain class (a rollout worker, a reward worker, a learner
rank) and calls their methods by name, so the driver reads like local code::

    rollouts = make_worker_group("rollout", RolloutWorker, 2, cfg.cluster, cfg)
    groups = rollouts.map("generate", batches)          # scattered round-robin, results in item order
    rollouts.call("set_weights", state, version)        # the same call on every worker
    future = rollouts.submit("generate", batch)         # one item on any worker; wait(futures) streams
    future = rollouts.submit_to(1, "generate", batch)   # the same, starting on worker 1
    later = rollouts.map_async("generate", batches)     # map without waiting: later.result()

Calls pinned to a worker (``call``, ``call_one``, ``call_async``) are re-issued only on that worker
once restarted; items (``map``, ``map_async``, ``submit``) also move to a live worker when Ray gave
up on theirs.

``LocalWorkerGroup`` builds the instances in this process (breakpoints work, no Ray is imported);
``RayWorkerGroup`` (system/workers/ray_group.py) builds them as Ray actors. Both wrap an exception
raised by a worker method in ``WorkerCallError`` naming the role, worker, method and item, with the
original exception as ``cause``; a worker that died and could not be recovered is a ``WorkerDiedError``.
"""

from __future__ import annotations

import os
import re
import socket
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from system.errors import CheckpointError, ConfigError, DataError

__all__ = [
    "LocalFuture",
    "MapFuture",
    "LocalWorkerGroup",
    "ResourceError",
    "Resources",
    "WorkerCallError",
    "WorkerDiedError",
    "WorkerFuture",
    "WorkerGroup",
    "WorkerGroupError",
    "WorkerStartError",
    "USER_ERRORS",
    "check_method",
    "distributed_env",
    "free_port",
    "user_error_in",
    "wait",
]


class WorkerGroupError(RuntimeError):
    """Something went wrong inside a worker group; the message names the role and the worker."""


class WorkerCallError(WorkerGroupError):
    """A worker method raised; ``cause`` is the original exception (its traceback is in the message)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.__cause__ = cause  # the original traceback prints under this one


class WorkerDiedError(WorkerGroupError):
    """A worker process died and the call could not be re-issued (no restarts or retries left)."""


class WorkerStartError(WorkerGroupError):
    """A worker's constructor raised, or the worker did not start in time. ``user_error`` is the message
    of a ConfigError / CheckpointError / DataError the constructor raised (a bad input, e.g. a missing
    model path: the CLI prints it alone and exits 2), else None (a fault: the full report stands)."""

    def __init__(self, message: str, user_error: str | None = None) -> None:
        super().__init__(message)
        self.user_error = user_error


class ResourceError(ConfigError):
    """The cluster cannot give what the config asks for (CPUs, GPUs, a GPU backend); raised before waiting."""


USER_ERRORS = (ConfigError, CheckpointError, DataError, ResourceError)
_REMOTE_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+): (.+)$")


def user_error_in(last_line: str) -> str | None:
    """The message of a user error (``USER_ERRORS``) from the last line of a remote traceback
    (``system.errors.CheckpointError: model path ...``): Ray hands a failed actor constructor back as
    text only, not as the exception object."""
    match = _REMOTE_ERROR_LINE.match(last_line.strip())
    if match is None or match.group(1) not in {cls.__name__ for cls in USER_ERRORS}:
        return None
    return match.group(2)


@dataclass(frozen=True)
class Resources:
    """What one worker of a group asks the cluster for."""

    cpus: float = 1.0
    gpus: float = 0.0


def check_method(cls: type, role: str, method: str) -> None:
    """Fail in the driver, before anything is sent, when ``cls`` has no public method ``method``."""
    if method.startswith("_") or not callable(getattr(cls, method, None)):
        public = sorted(n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n, None)))
        raise AttributeError(f"{role} workers ({cls.__name__}) have no public method {method!r}; "
                             f"methods: {', '.join(public) or '(none)'}")


def call_label(role: str, index: int, method: str, item: int | None) -> str:
    """``rollout[1].generate (item 7)``: how errors name a call."""
    return f"{role}[{index}].{method}" + ("" if item is None else f" (item {item})")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the usual bind-to-0 trick; it may be taken later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def distributed_env(rank: int, world_size: int, master_addr: str, master_port: int,
                    local_rank: int) -> dict[str, str]:
    """The env:// rendezvous variables ``torch.distributed`` and DeepSpeed read in a learner rank."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(local_rank),
            "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)}


class WorkerFuture(ABC):
    """The pending result of one call (``call_async``): ``result(timeout)`` and ``done()``."""

    @abstractmethod
    def done(self) -> bool:
        """True once ``result()`` would return or raise at once (never blocks on a running call)."""

    @abstractmethod
    def result(self, timeout: float | None = None) -> Any:
        """The call's return value; raises its WorkerCallError / WorkerDiedError, or TimeoutError."""

    @classmethod
    def wait_any(cls, futures: Sequence[WorkerFuture], timeout: float | None) -> None:
        """Block until at least one of ``futures`` (all of this class) may be done, or ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not any(f.done() for f in futures):
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.01)


def wait(futures: Iterable[WorkerFuture], timeout: float | None = None) -> tuple[list[WorkerFuture], list[WorkerFuture]]:
    """Wait until at least one future is done (or ``timeout`` seconds pass); returns (done, pending).

    For streaming: ``while pending: done, pending = wait(pending); for f in done: use(f.result())``.
    """
    futures = list(futures)
    done = [f for f in futures if f.done()]
    if not done and futures:
        kinds = {type(f) for f in futures}
        if len(kinds) == 1:
            kinds.pop().wait_any(futures, timeout)
        else:  # mixed kinds: poll
            WorkerFuture.wait_any(futures, timeout)
        done = [f for f in futures if f.done()]
    done_ids = {id(f) for f in done}
    return done, [f for f in futures if id(f) not in done_ids]


class LocalFuture(WorkerFuture):
    """An already finished call: its value, or the WorkerGroupError it raised."""

    def __init__(self, value: Any = None, error: WorkerGroupError | None = None) -> None:
        self._value, self._error = value, error

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class MapFuture(WorkerFuture):
    """The results of ``map_async``: one future per item; ``result()`` is their list in item order."""

    def __init__(self, futures: Sequence[WorkerFuture]) -> None:
        self.items = list(futures)

    def done(self) -> bool:
        return all([f.done() for f in self.items])  # poll every item: each re-issues once its worker's death is seen

    def result(self, timeout: float | None = None) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = self.items
        while pending:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"{len(pending)} of {len(self.items)} mapped items did not finish within "
                                   f"{timeout:g} s")
            _, pending = wait(pending, remaining)
        return [f.result() for f in self.items]


class WorkerGroup(ABC):
    """``size`` workers of one ``role``, all instances of one class (see the module docstring)."""

    role: str
    size: int

    @abstractmethod
    def call_async(self, index: int, method: str, *args: Any, **kwargs: Any) -> WorkerFuture:
        """Start ``method(*args, **kwargs)`` on worker ``index``; returns at once with a future."""

    @abstractmethod
    def restarts(self) -> int:
        """How many times workers of this group were seen restarted (0 for a local group)."""

    @abstractmethod
    def shutdown(self) -> None:
        """Call each worker's ``close()`` if its class has one, then stop the workers (idempotent)."""

    @abstractmethod
    def submit(self, method: str, *args: Any, **kwargs: Any) -> WorkerFuture:
        """One item of work on any worker (round-robin); if that worker dies, the call is re-issued on the
        restarted worker or on a live one. ``call_async`` instead stays on its worker."""

    @abstractmethod
    def _start(self, index: int, method: str, args: tuple, kwargs: dict, item: int | None,
               pinned: bool) -> WorkerFuture:
        """Start a call on worker ``index``; ``item`` is named by errors, ``pinned`` forbids moving it."""

    def submit_to(self, index: int, method: str, *args: Any, **kwargs: Any) -> WorkerFuture:
        """``submit`` starting on worker ``index`` (a stream keeps each worker's own queue of calls); like
        ``submit``, it moves to a live worker if Ray gives up on that one."""
        return self._start(index, method, args, kwargs, None, False)

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """The same call on every worker (started together); results in worker order."""
        futures = [self.call_async(i, method, *args, **kwargs) for i in range(self.size)]
        return [f.result() for f in futures]

    def call_one(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.call_async(index, method, *args, **kwargs).result()

    def map(self, method: str, items: Sequence[Any], **kwargs: Any) -> list[Any]:
        """``method(item, **kwargs)`` for each item, item i on worker i % size; results in item order.

        All items are submitted at once. An item whose worker dies is re-issued on the restarted worker
        or on a live one, so every item's result is returned exactly once.
        """
        return self.map_async(method, items, **kwargs).result()

    def map_async(self, method: str, items: Sequence[Any], **kwargs: Any) -> MapFuture:
        """``map`` without waiting: ``.result()`` gives the list in item order."""
        return MapFuture([self._start(i % self.size, method, (item,), kwargs, i, False)
                          for i, item in enumerate(items)])

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(role={self.role!r}, size={self.size})"


class LocalWorkerGroup(WorkerGroup):
    """``n`` instances of ``cls`` in this process; calls run one after another, at once.

    ``distributed=True`` (a learner) sets the env:// variables for a one-rank group on 127.0.0.1 before
    building the instance and restores them on ``shutdown``; one process holds one rank, so n must be 1.
    """

    def __init__(self, role: str, cls: type, n: int, *args: Any, distributed: bool = False,
                 per_worker_kwargs: Sequence[dict[str, Any]] | None = None, **kwargs: Any) -> None:
        if n < 1:
            raise ValueError(f"{role}: a worker group needs at least 1 worker, got {n}")
        if distributed and n != 1:
            raise ConfigError(f"{role}: local mode runs a single learner rank in this process, but {n} were "
                              "asked for; set cluster.num_learner_ranks: 1, or cluster.mode: ray")
        if per_worker_kwargs is not None and len(per_worker_kwargs) != n:
            raise ValueError(f"{role}: per_worker_kwargs has {len(per_worker_kwargs)} entries for {n} workers")
        self.role, self.size, self.cls = role, n, cls
        self._cursor = -1
        self._saved_env: dict[str, str | None] = {}
        if distributed:
            env = distributed_env(0, 1, "127.0.0.1", free_port(), 0)
            self._saved_env = {key: os.environ.get(key) for key in env}
            os.environ.update(env)
        self.workers: list[Any] = []
        try:
            for i in range(n):
                extra = dict(per_worker_kwargs[i]) if per_worker_kwargs is not None else {}
                self.workers.append(cls(*args, **kwargs, **extra))
        except Exception as err:
            self._restore_env()
            raise WorkerStartError(f"{role}[{len(self.workers)}]: {cls.__name__}(...) failed to start: "
                                   f"{type(err).__name__}: {err}",
                                   str(err) if isinstance(err, USER_ERRORS) else None) from err

    def call_async(self, index: int, method: str, *args: Any, **kwargs: Any) -> LocalFuture:
        return self._start(index, method, args, kwargs, None, True)

    def submit(self, method: str, *args: Any, **kwargs: Any) -> LocalFuture:
        self._cursor = (self._cursor + 1) % self.size
        return self._start(self._cursor, method, args, kwargs, None, False)

    def _start(self, index: int, method: str, args: tuple, kwargs: dict, item: int | None,
               pinned: bool) -> LocalFuture:
        check_method(self.cls, self.role, method)
        if not 0 <= index < self.size:
            raise IndexError(f"{self.role}: worker index {index} out of range 0..{self.size - 1}")
        try:
            return LocalFuture(getattr(self.workers[index], method)(*args, **kwargs))
        except Exception as err:  # a worker's own error, reported with the call it failed in
            label = call_label(self.role, index, method, item)
            return LocalFuture(error=WorkerCallError(f"{label} raised {type(err).__name__}: {err}", err))

    def restarts(self) -> int:
        return 0

    def shutdown(self) -> None:
        """Call each worker's ``close()`` if its class has one (failures become warnings), then drop them."""
        workers, self.workers = self.workers, []
        for i, worker in enumerate(workers):
            close = getattr(worker, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as err:  # shutdown runs in finally blocks: never hide the error being unwound
                    warnings.warn(f"{self.role}[{i}].close() failed: {type(err).__name__}: {err}", RuntimeWarning,
                                  stacklevel=2)
        self._restore_env()

    def _restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}
