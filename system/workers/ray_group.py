"""``RayWorkerGroup``: the workers of one role as Ray actors, with restarts and re-issued calls.

Each worker is a ``_Host`` actor that builds the plain worker class inside the actor process and calls
its methods by name; every reply carries the host's *incarnation* (a random id drawn when the process
builds it), so the group sees a restart as a new incarnation and counts it (``restarts()``).

Fault tolerance. Ray restarts a dead actor up to ``cluster.max_restarts`` times; Ray's own task retry
is left off (``max_task_retries=0`` on the actor), because the group re-issues instead: a future whose
worker died pings that worker until it is back (at most ``startup_timeout_s``), then sends the call
again there, or to a live worker when Ray has given up on it, at most ``cluster.max_task_retries``
times. A call may therefore *run* twice, but its result is returned once.

Learner ranks (``distributed=True``) get one placement-group bundle each and the env:// variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; the master is rank 0's node and a port free
there) before their class is built, so they can form one torch.distributed group (gloo / NCCL). They
never restart: a learner failure is a ``WorkerDiedError``.

Placement by node kind: ``cluster.<role>_resources`` (custom Ray resources, e.g. ``{rollout_node: 1}``)
go into every actor's request of that role, and into each learner rank's bundle, so only nodes started
with that resource (``ray start --resources``, or ``rayStartParams.resources`` of a KubeRay worker group)
take them.

Requests the cluster can never satisfy (more CPUs or GPUs than it has, NCCL without GPUs, a custom
resource no node has) fail before any actor is created, with the numbers and the config fields to change.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayError, RayTaskError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from system.config import ClusterConfig
from system.workers.base import (
    ResourceError,
    Resources,
    WorkerCallError,
    WorkerDiedError,
    WorkerFuture,
    WorkerGroup,
    WorkerGroupError,
    WorkerStartError,
    call_label,
    check_method,
    distributed_env,
    free_port,
    user_error_in,
)
from system.workers.capacity import check_capacity, check_gpu_backend, cluster_capacity

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LIVE_GROUPS: weakref.WeakSet[RayWorkerGroup] = weakref.WeakSet()  # for "this run already holds ..."


class _Host:
    """Runs inside the actor process: builds the worker instance, then calls its methods by name."""

    def __init__(self, cls: type, args: tuple, kwargs: dict, build: bool, threads: int | None = None) -> None:
        from system.malloc import tune_malloc

        tune_malloc()
        self.incarnation = uuid.uuid4().hex
        self.instance: Any = None
        if threads is not None:  # before the worker builds anything (cluster.torch_threads)
            import torch

            torch.set_num_threads(threads)
        if build:
            self.instance = cls(*args, **kwargs)

    def build(self, cls: type, args: tuple, kwargs: dict, env: dict[str, str]) -> str:
        os.environ.update(env)
        self.instance = cls(*args, **kwargs)
        return self.incarnation

    def ping(self) -> str:
        return self.incarnation

    def pid(self) -> int:
        """The actor's process id (fault-injection tests kill it)."""
        return os.getpid()

    def address(self) -> tuple[str, int]:
        """This node's IP (as Ray knows it) and a TCP port free on it: a rendezvous point for rank 0."""
        ip = ray.util.get_node_ip_address()
        return ip, free_port(ip)

    def close(self) -> None:
        """The worker's own ``close()``, if it has one (before the actor is killed)."""
        close = getattr(self.instance, "close", None)
        if callable(close):
            close()

    def invoke(self, method: str, payload: tuple[tuple, dict]) -> tuple[str, Any]:
        args, kwargs = payload
        return self.incarnation, getattr(self.instance, method)(*args, **kwargs)


def _check_custom(role: str, n: int, custom: dict[str, float]) -> None:
    """A ResourceError when no node has enough of a custom resource for one worker, or all nodes together
    not enough for ``n`` (other jobs' holdings are not counted: those only delay the start)."""
    total, nodes = cluster_capacity()
    for key, per in custom.items():
        biggest = max((node.get(key, 0.0) for node in nodes), default=0.0)
        if per > biggest + 1e-9 or per * n > total.get(key, 0.0) + 1e-9:
            raise ResourceError(
                f"{role}: {n} workers x {per:g} {key!r} (cluster.{role}_resources), but the cluster has "
                f"{total.get(key, 0.0):g} {key!r} in total and at most {biggest:g} on one node; start nodes with "
                f"`ray start --resources '{{\"{key}\": N}}'` (KubeRay: rayStartParams.resources), or change "
                f"cluster.{role}_resources")


def _held_by_others() -> dict[str, tuple[Resources, int]]:
    """What this process's live worker groups hold, by ``role xN``."""
    return {f"{g.role} x{g.size}": (g.resources, g.size) for g in list(_LIVE_GROUPS)}


class RayWorkerGroup(WorkerGroup):
    """``n`` Ray actors running ``cls(*args, **kwargs, **per_worker_kwargs[i])`` (see the module docstring)."""

    def __init__(self, role: str, cls: type, n: int, cfg: ClusterConfig, *args: Any,
                 resources: Resources | None = None, distributed: bool = False,
                 per_worker_kwargs: Sequence[dict[str, Any]] | None = None, max_concurrency: int = 1,
                 **kwargs: Any) -> None:
        if not ray.is_initialized():
            raise WorkerGroupError(f"{role}: Ray is not connected in this process; call "
                                   "system.ray_cluster.connect(cfg.cluster) before building Ray worker groups")
        if n < 1:
            raise ValueError(f"{role}: a worker group needs at least 1 worker, got {n}")
        if per_worker_kwargs is not None and len(per_worker_kwargs) != n:
            raise ValueError(f"{role}: per_worker_kwargs has {len(per_worker_kwargs)} entries for {n} workers")
        self.role, self.size, self.cls, self.distributed = role, n, cls, distributed
        self.resources = resources or Resources()
        self.custom: dict[str, float] = dict(getattr(cfg, f"{role}_resources", None) or {})
        self.startup_timeout_s = cfg.startup_timeout_s
        self.max_task_retries = 0 if distributed else cfg.max_task_retries
        self._lock = threading.Lock()
        self._restarts = 0
        self._dead: set[int] = set()
        self._cursor = -1
        self.max_restarts = 0 if distributed else cfg.max_restarts
        self._incarnations: list[str | None] = [None] * n
        self._pg: PlacementGroup | None = None
        self._actors: list[Any] = []
        if distributed:
            check_gpu_backend(role, cfg.learner_backend)
        check_capacity(role, n, self.resources, held=_held_by_others(),
                       one_node=distributed and cfg.learner_placement == "STRICT_PACK")
        _check_custom(role, n, self.custom)
        extra = [dict(kw) for kw in per_worker_kwargs] if per_worker_kwargs is not None else [{}] * n
        try:
            if distributed:
                self._start_ranks(cfg, args, kwargs, extra)
            else:
                self._start_workers(cfg, args, kwargs, extra, max_concurrency)
        except BaseException:
            self._kill()  # no close(): the workers never (all) started
            raise
        _LIVE_GROUPS.add(self)

    # ------------------------------------------------------------------------------------------ start

    def _options(self, cfg: ClusterConfig, i: int, max_restarts: int, max_concurrency: int) -> dict[str, Any]:
        options = {"num_cpus": self.resources.cpus, "num_gpus": self.resources.gpus, "max_restarts": max_restarts,
                   "max_task_retries": 0, "max_concurrency": max_concurrency, "namespace": cfg.namespace,
                   "name": f"{self.role}-{i}-{uuid.uuid4().hex[:8]}"}
        if self.custom:
            options["resources"] = dict(self.custom)
        if cfg.torch_threads is not None:
            # Ray sets OMP_NUM_THREADS to the actor's CPUs; torch.set_num_threads alone then runs at about
            # half speed (the OpenMP / MKL pools keep the env's size), and the env alone caps torch at the
            # machine's cores, so the actor gets both (the env merged with the job's runtime env).
            n = str(cfg.torch_threads)
            options["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}}
        return options

    def _start_workers(self, cfg: ClusterConfig, args: tuple, kwargs: dict, extra: list[dict],
                       max_concurrency: int) -> None:
        host = ray.remote(_Host)
        for i in range(self.size):
            options = self._options(cfg, i, cfg.max_restarts, max_concurrency)
            actor = host.options(**options).remote(self.cls, args, {**kwargs, **extra[i]}, True, cfg.torch_threads)
            self._actors.append(actor)
        self._incarnations = self._await_started([actor.ping.remote() for actor in self._actors], "start")

    def _start_ranks(self, cfg: ClusterConfig, args: tuple, kwargs: dict, extra: list[dict]) -> None:
        bundle = {"CPU": self.resources.cpus, "GPU": self.resources.gpus}
        bundle = {**{key: value for key, value in bundle.items() if value > 0}, **self.custom}
        self._pg = placement_group([dict(bundle) for _ in range(self.size)], strategy=cfg.learner_placement,
                                   name=f"{self.role}-{uuid.uuid4().hex[:8]}")
        try:
            ray.get(self._pg.ready(), timeout=self.startup_timeout_s)
        except GetTimeoutError:
            raise ResourceError(f"{self.role}: the placement group of {self.size} x {bundle} "
                                f"({cfg.learner_placement}) was not placed within {self.startup_timeout_s:g} s; "
                                "other jobs may hold the resources (see `ray status`)") from None
        host = ray.remote(_Host)
        for i in range(self.size):
            strategy = PlacementGroupSchedulingStrategy(placement_group=self._pg, placement_group_bundle_index=i)
            options = self._options(cfg, i, 0, 1)
            actor = host.options(scheduling_strategy=strategy, **options).remote(self.cls, (), {}, False,
                                                                                 cfg.torch_threads)
            self._actors.append(actor)
        addresses = self._await_started([actor.address.remote() for actor in self._actors], "start")
        master_addr, master_port = addresses[0]
        local_rank: dict[str, int] = {}
        builds = []
        for i, (ip, _) in enumerate(addresses):
            # With GPUs, Ray shows each actor only its own GPU(s) (CUDA_VISIBLE_DEVICES), so device 0 is the
            # rank's GPU: LOCAL_RANK 0 makes DeepSpeed pick it. On CPU, LOCAL_RANK counts ranks per node.
            local = 0 if self.resources.gpus > 0 else local_rank.get(ip, 0)
            local_rank[ip] = local_rank.get(ip, 0) + 1
            env = distributed_env(i, self.size, master_addr, master_port, local)
            builds.append(self._actors[i].build.remote(self.cls, args, {**kwargs, **extra[i]}, env))
        # all ranks are built together: their constructors may rendezvous (init_process_group)
        self._incarnations = self._await_started(builds, "build")

    def _await_started(self, refs: list[Any], what: str) -> list[Any]:
        """Results of the start-up calls, or a WorkerStartError naming the worker and the reason."""
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=self.startup_timeout_s)
        if pending:
            slow = [refs.index(ref) for ref in pending]
            raise WorkerStartError(
                f"{self.role}: workers {slow} of {self.size} did not {what} within cluster.startup_timeout_s = "
                f"{self.startup_timeout_s:g} s (each asks for {self.resources.cpus:g} CPU, {self.resources.gpus:g} "
                "GPU: they may be waiting for resources other jobs hold, see `ray status`, or their constructor "
                "is slow)")
        results = []
        for i, ref in enumerate(refs):
            try:
                results.append(ray.get(ref))
            except RayError as err:
                text = _ANSI.sub("", str(err)).strip()
                last = text.splitlines()[-1] if text else type(err).__name__  # the remote exception's own line
                raise WorkerStartError(f"{self.role}[{i}]: {self.cls.__name__}(...) failed to {what}: {last}\n"
                                       f"{text}", user_error_in(last)) from None
        return results

    # ------------------------------------------------------------------------------------------ calls

    def call_async(self, index: int, method: str, *args: Any, **kwargs: Any) -> RayFuture:
        return self._start(index, method, args, kwargs, None, pinned=True)

    def submit(self, method: str, *args: Any, **kwargs: Any) -> RayFuture:
        return self._start(self.next_worker(), method, args, kwargs, None, pinned=False)

    def _start(self, index: int, method: str, args: tuple, kwargs: dict, item: int | None,
               pinned: bool) -> RayFuture:
        check_method(self.cls, self.role, method)
        if not 0 <= index < self.size:
            raise IndexError(f"{self.role}: worker index {index} out of range 0..{self.size - 1}")
        return RayFuture(self, index, method, (args, kwargs), item, pinned)

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """As WorkerGroup.call, with the arguments put in the object store once for all workers."""
        check_method(self.cls, self.role, method)
        payload = ray.put((args, kwargs)) if self.size > 1 else (args, kwargs)
        futures = [RayFuture(self, i, method, payload, None, True) for i in range(self.size)]
        return [f.result() for f in futures]

    def send(self, index: int, method: str, payload: Any) -> Any:
        if not self._actors:
            raise WorkerGroupError(f"{self.role}: this worker group was shut down")
        return self._actors[index].invoke.remote(method, payload)

    def observe(self, index: int, incarnation: str) -> None:
        """A reply from worker ``index``: a new incarnation there means it restarted."""
        with self._lock:
            self._note_incarnation(index, incarnation)

    def _note_incarnation(self, index: int, incarnation: str) -> None:
        if self._incarnations[index] not in (None, incarnation):
            self._restarts += 1
        self._incarnations[index] = incarnation

    def recover(self, index: int, pinned: bool) -> int | None:
        """After a call on ``index`` failed because its actor died: wait for the restart and return the
        worker to re-issue on: ``index`` itself, or (unless ``pinned``) a live one when Ray gave up on it.
        None when there is none."""
        with self._lock:
            if index not in self._dead and not self._ping_until_back(index):
                self._dead.add(index)
            live = [j for j in range(self.size) if j not in self._dead]
        if index in live:
            return index
        if pinned or not live:
            return None
        return min(live, key=lambda j: (j - index) % self.size)

    def next_worker(self) -> int:
        """Round-robin over the workers not known dead (for ``submit``)."""
        with self._lock:
            live = [j for j in range(self.size) if j not in self._dead] or list(range(self.size))
            self._cursor = (self._cursor + 1) % self.size
            return min(live, key=lambda j: (j - self._cursor) % self.size)

    def _ping_until_back(self, index: int) -> bool:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            try:
                incarnation = ray.get(self._actors[index].ping.remote(), timeout=max(0.1, deadline - time.monotonic()))
            except ActorUnavailableError:  # restarting, not yet reachable
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.2)
            except (RayActorError, GetTimeoutError):  # dead for good (restarts used up) or not back in time
                return False
            else:
                self._note_incarnation(index, incarnation)
                return True

    def restarts(self) -> int:
        return self._restarts

    def shutdown(self, close_timeout_s: float = 30.0) -> None:
        """Call each live worker's ``close()`` (if its class has one; failures become warnings, so they
        never hide the error a ``finally:`` is unwinding), then kill the actors and free their resources."""
        if self._actors and ray.is_initialized() and callable(getattr(self.cls, "close", None)):
            refs = [actor.close.remote() for i, actor in enumerate(self._actors) if i not in self._dead]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=close_timeout_s)
            for ref in ready:
                try:
                    ray.get(ref)
                except RayError as err:
                    warnings.warn(f"{self.role}: a worker's close() failed: {err}", RuntimeWarning, stacklevel=2)
        self._kill()

    def _kill(self) -> None:
        _LIVE_GROUPS.discard(self)
        actors, self._actors = self._actors, []
        if ray.is_initialized():
            for actor in actors:
                ray.kill(actor, no_restart=True)
            if self._pg is not None:
                remove_placement_group(self._pg)
        self._pg = None


class RayFuture(WorkerFuture):
    """One call on a Ray worker; re-issued (by ``done``/``result``) when its worker dies: on the same
    worker once it is back, or, unless ``pinned``, on a live one when Ray gave up on it."""

    def __init__(self, group: RayWorkerGroup, index: int, method: str, payload: Any, item: int | None,
                 pinned: bool) -> None:
        self.group, self.index, self.method, self.item, self.pinned = group, index, method, item, pinned
        self._payload = payload
        self._retries_left = group.max_task_retries
        self._deaths = 0
        self._outcome: tuple[bool, Any] | None = None  # (ok, value or error)
        self._ref = group.send(index, method, payload)

    def done(self) -> bool:
        if self._outcome is None:
            ready, _ = ray.wait([self._ref], timeout=0)
            if ready:
                self._settle()
        return self._outcome is not None

    def result(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"{self._label()} did not finish within {timeout:g} s")
            ray.wait([self._ref], timeout=remaining)
        assert self._outcome is not None
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    @classmethod
    def wait_any(cls, futures: Sequence[WorkerFuture], timeout: float | None) -> None:
        refs = [f._ref for f in futures if isinstance(f, RayFuture) and f._outcome is None]
        if len(refs) == len(futures):  # all still running
            ray.wait(refs, num_returns=1, timeout=timeout)

    def _label(self) -> str:
        return call_label(self.group.role, self.index, self.method, self.item)

    def _settle(self) -> None:
        """The ref is ready: record the value or the error, or re-issue if the worker died."""
        try:
            incarnation, value = ray.get(self._ref)
        except RayTaskError as err:
            cause = err.cause if err.cause is not None else err
            self._outcome = (False, WorkerCallError(f"{self._label()} raised {type(cause).__name__}: {err}", cause))
        except RayActorError as err:
            self._reissue(err)
        except RayError as err:  # e.g. the reply was lost with its node
            self._outcome = (False, WorkerGroupError(f"{self._label()} failed: {type(err).__name__}: {err}"))
        else:
            self.group.observe(self.index, incarnation)
            self._outcome = (True, value)

    def _reissue(self, err: RayActorError) -> None:
        self._deaths += 1
        label, group = self._label(), self.group
        target = group.recover(self.index, self.pinned)
        if target is None or self._retries_left <= 0:
            if group.distributed:
                why = ("learner ranks are neither restarted nor re-issued (their torch.distributed group is gone): "
                       "the run has to stop and resume from its last checkpoint")
            elif target is not None:
                why = f"it was re-issued cluster.max_task_retries = {group.max_task_retries} time(s) already"
            elif self.pinned:
                why = f"Ray did not restart it (cluster.max_restarts = {group.max_restarts})"
            else:
                why = f"no worker of the group is alive (cluster.max_restarts = {group.max_restarts})"
            self._outcome = (False, WorkerDiedError(f"{label}: its worker died ({self._deaths} time(s)) and "
                                                    f"{why}. Last error: {err}"))
            return
        self._retries_left -= 1
        self.index = target
        self._ref = group.send(target, self.method, self._payload)
