"""Worker groups: the same plain classes in-process and as Ray actors (one real local Ray cluster on
127.0.0.1 for the module), re-issue after kill -9, learner ranks in one gloo group, and the fast,
clear failures: resources the cluster lacks, NCCL without GPUs, an unreachable address."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from workers_fixture import (  # this directory: Ray workers get it on their PYTHONPATH
    Counter,
    NeedsModel,
    Rank,
)

from system import ray_cluster
from system.config import ClusterConfig, ConfigError, build_config
from system.workers import (
    LocalWorkerGroup,
    ResourceError,
    WorkerCallError,
    WorkerDiedError,
    WorkerGroup,
    WorkerStartError,
    make_worker_group,
    wait,
)
from system.workers.base import free_port, user_error_in

HERE = Path(__file__).resolve().parent
LOCAL = ClusterConfig(mode="local")


@pytest.fixture(scope="module")
def ray_cfg() -> Iterator[ClusterConfig]:
    """A fresh local Ray cluster of 4 logical CPUs on 127.0.0.1 (token auth, Ray's default)."""
    cfg = ClusterConfig(mode="ray", num_cpus=4, object_store_mb=128, namespace="test-workers",
                        startup_timeout_s=120.0)  # a regression fails in 2 minutes instead of hanging
    ray_cluster.shutdown()  # a Ray another test module of this process left up lacks this directory on the path
    ray_cluster.connect(cfg, extra_pythonpath=[HERE], log_to_driver=False)
    try:
        yield cfg
    finally:
        ray_cluster.shutdown()


def _groups(kind: str, cfg: ClusterConfig, **kwargs) -> WorkerGroup:  # type: ignore[no-untyped-def]
    return make_worker_group("rollout", Counter, 2, cfg if kind == "ray" else LOCAL, 1, **kwargs)


@pytest.fixture(scope="module")
def scaled(ray_cfg: ClusterConfig) -> Iterator[dict[str, WorkerGroup]]:
    """Counter(start=i, scale=(1, 3)[i]) twice, local and on Ray; the tests using it never change its state."""
    groups: dict[str, WorkerGroup] = {}
    try:
        for kind, cfg in (("local", LOCAL), ("ray", ray_cfg)):
            groups[kind] = make_worker_group("rollout", Counter, 2, cfg, index_kwarg="start",
                                             per_worker_kwargs=[{"scale": 1}, {"scale": 3}])
        yield groups
    finally:
        for group in groups.values():
            group.shutdown()


# ------------------------------------------------------------------------------------- same results


def _exercise(group: WorkerGroup) -> list:
    return [
        group.call("add", 3),        # each worker: 1 + 3 * 2 = 7
        group.call_one(1, "add", 1),  # worker 1: 7 + 1 * 2 = 9
        group.call("add", 0),        # [7, 9]: the state stayed per worker
        group.map("square", list(range(7))),  # x * x * 2
        group.call_async(0, "add", 5).result(timeout=60),  # 7 + 10 = 17
        group.map("square", []),
    ]


@pytest.mark.timeout(300)
def test_local_and_ray_groups_give_the_same_results(ray_cfg: ClusterConfig, scaled: dict[str, WorkerGroup]) -> None:
    expected = [[7, 7], 9, [7, 9], [0, 2, 8, 18, 32, 50, 72], 17, []]
    with _groups("local", ray_cfg, scale=2) as local, _groups("ray", ray_cfg, scale=2) as remote:
        assert isinstance(local, LocalWorkerGroup) and type(remote).__name__ == "RayWorkerGroup"
        assert _exercise(local) == expected
        assert _exercise(remote) == expected
        assert local.restarts() == remote.restarts() == 0
    for group in scaled.values():
        assert group.call("add", 0) == [0, 1]  # index_kwarg: Counter(start=0), Counter(start=1)
        # per-worker keywords, and map's round-robin: item i runs on worker i % 2, scales (1, 3):
        # item 0 -> 1*1*1 = 1, item 1 -> 2*2*3 = 12, item 2 -> 3*3*1 = 9, item 3 -> 4*4*3 = 48
        assert group.map("square", [1, 2, 3, 4]) == [1, 12, 9, 48]
        # submit: one item on any worker, round-robin: 2*2*1 = 4 (worker 0), 2*2*3 = 12 (worker 1), 4 again
        assert [group.submit("square", 2).result(timeout=60) for _ in range(3)] == [4, 12, 4]
        assert group.map_async("square", [5, 5]).result(timeout=60) == [25, 75]  # 5*5*1, 5*5*3


@pytest.mark.timeout(300)
def test_torch_threads_of_the_actors(ray_cfg: ClusterConfig) -> None:
    """cluster.torch_threads sets torch's threads in every actor, whatever CPUs it holds (1 here)."""
    with _groups("ray", ray_cfg.model_copy(update={"torch_threads": 3})) as group:
        for threads, omp, pythonpath in group.call("torch_threads"):
            assert (threads, omp) == (3, "3")
            assert str(HERE) in (pythonpath or "")  # the job's runtime env still applies


@pytest.mark.timeout(300)
def test_errors_name_the_worker_and_the_item(ray_cfg: ClusterConfig, scaled: dict[str, WorkerGroup]) -> None:
    for kind, group in scaled.items():
        with pytest.raises(WorkerCallError, match=r"rollout\[1\]\.check_positive \(item 1\) raised ValueError") as info:
            group.map("check_positive", [1, -2, 3])
        assert isinstance(info.value.cause, ValueError) and "negative input -2" in str(info.value.cause)
        with pytest.raises(AttributeError, match="have no public method 'sqaure'; methods: add, check_positive"):
            group.map("sqaure", [1])
        assert group.map("check_positive", [4, 5, 6]) == [4, 5, 6]  # the workers are still fine
        with pytest.raises(WorkerStartError, match=r"rollout\[0\]: Counter\(\.\.\.\) failed to start: "
                                                      r"ValueError: refusing to start with start=1"):
            _groups(kind, ray_cfg, fail_on_start=True)


@pytest.mark.timeout(300)
def test_a_bad_input_a_constructor_finds_is_kept_as_a_user_error(ray_cfg: ClusterConfig) -> None:
    """Ray hands a failed constructor back as text: its CheckpointError's message is kept as
    ``user_error`` (the CLI prints it alone and exits 2), locally and on Ray; a fault keeps None."""
    want = "model path /no/such/model does not exist: set model.path to a local checkpoint directory"
    for cfg in (LOCAL, ray_cfg):
        with pytest.raises(WorkerStartError, match=r"rollout\[0\]: NeedsModel\(\.\.\.\) failed to start") as info:
            make_worker_group("rollout", NeedsModel, 1, cfg, "/no/such/model")
        assert info.value.user_error == want, cfg.mode
        with pytest.raises(WorkerStartError) as info:
            _groups(cfg.mode, ray_cfg, fail_on_start=True)
        assert info.value.user_error is None, cfg.mode


def test_user_errors_are_read_from_the_last_line_of_a_remote_traceback() -> None:
    assert user_error_in("system.errors.CheckpointError: model path /m does not exist") == "model path /m does not exist"
    assert user_error_in("ResourceError: rollout: 9 CPUs") == "rollout: 9 CPUs"
    assert user_error_in("ValueError: refusing to start") is None
    assert user_error_in("The actor died unexpectedly before finishing this task.") is None


@pytest.mark.timeout(300)
def test_call_async_streams_whichever_finishes_first(scaled: dict[str, WorkerGroup]) -> None:
    group = scaled["ray"]
    slow = group.call_async(0, "slow_square", 3, 2.0)
    fast = group.call_async(1, "slow_square", 2, 0.0)
    done, pending = wait([slow, fast], timeout=60)
    assert done == [fast] and pending == [slow] and not slow.done()
    with pytest.raises(TimeoutError, match=r"rollout\[0\]\.slow_square did not finish within 0.01 s"):
        slow.result(timeout=0.01)
    assert fast.result()[0] == 4 and slow.result(timeout=60)[0] == 9
    future = scaled["local"].call_async(0, "slow_square", 5, 0.0)  # a local call has run when call_async returns
    assert future.done() and future.result()[0] == 25


# ------------------------------------------------------------------------------------- kill -9


def _kill_mid_map(group: WorkerGroup, victim_pid: int, items: int) -> list:
    # worker 0 has items 0, 2, 4, ... : items / 2 * 0.3 s >= 1.8 s of work, so a kill at 1 s lands mid-map
    timer = threading.Timer(1.0, os.kill, (victim_pid, signal.SIGKILL))
    timer.start()
    try:
        return group.map("slow_square", list(range(items)), delay_s=0.3)
    finally:
        timer.cancel()


@pytest.mark.timeout(300)
def test_kill_9_mid_map_reissues_on_the_restarted_worker(ray_cfg: ClusterConfig, tmp_path: Path) -> None:
    with _groups("ray", ray_cfg, per_worker_kwargs=[{"closed_dir": str(tmp_path)}, {}]) as group:
        old = group.call("pid")
        assert group.call("add", 5) == [6, 6]  # 1 + 5 on each worker
        results = _kill_mid_map(group, old[0], 12)
        assert [value for value, _ in results] == [x * x for x in range(12)]  # every item once, in order
        new = group.call("pid")
        assert new[0] != old[0] and new[1] == old[1] and group.restarts() == 1
        by_pid = [pid for _, pid in results]
        assert set(by_pid[1::2]) == {old[1]}  # worker 1's items were never disturbed
        first = by_pid[0::2]
        # worker 0's items: some (maybe none) before the kill by the old process, the rest re-issued to the new one
        assert set(first) <= {old[0], new[0]} and first[-1] == new[0]
        assert first == sorted(first, key=lambda pid: pid == new[0])  # old-process items all come first
        assert group.call("add", 1) == [2, 7]  # worker 0 restarted from scratch: 1 + 1; worker 1 kept its 6: 6 + 1
    # shutdown called close() on the restarted worker 0 (built with the same keywords): total 2
    assert [p.name for p in tmp_path.iterdir()] == [f"closed-{new[0]}-2"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_without_restarts_moves_the_items_to_a_live_worker(ray_cfg: ClusterConfig) -> None:
    cfg = ray_cfg.model_copy(update={"max_restarts": 0})
    with _groups("ray", cfg) as group:
        old = group.call("pid")
        results = _kill_mid_map(group, old[0], 12)
        assert [value for value, _ in results] == [x * x for x in range(12)]
        assert results[-2][1] == old[1]  # item 10 (worker 0's last) ran on worker 1
        assert group.restarts() == 0
        with pytest.raises(WorkerDiedError, match=r"rollout\[0\]\.pid: its worker died \(1 time\(s\)\) and Ray did "
                                                  r"not restart it \(cluster.max_restarts = 0\)"):
            group.call_one(0, "pid")  # a call pinned to a worker does not move
        assert [group.submit("pid").result(timeout=60) for _ in range(3)] == [old[1]] * 3  # items do


# ------------------------------------------------------------------------------------- learner ranks


@pytest.mark.timeout(300)
def test_learner_ranks_form_one_gloo_group(ray_cfg: ClusterConfig) -> None:
    cfg = ray_cfg.model_copy(update={"learner_cpus": 1.0})
    with make_worker_group("learner", Rank, 2, cfg) as ranks:
        # rank r contributes [1, 2] * (r + 1): [1, 2] + [2, 4] = [3, 6] on both ranks
        assert ranks.call("all_reduce", [1.0, 2.0]) == [(0, 2, [3.0, 6.0]), (1, 2, [3.0, 6.0])]
        env = ranks.call("env", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")
        assert [e["RANK"] for e in env] == ["0", "1"] and {e["WORLD_SIZE"] for e in env} == {"2"}
        assert {e["MASTER_ADDR"] for e in env} == {"127.0.0.1"} and len({e["MASTER_PORT"] for e in env}) == 1
        assert [e["LOCAL_RANK"] for e in env] == ["0", "1"]  # CPU ranks on one node
        os.kill(ranks.call_one(1, "pid"), signal.SIGKILL)  # a learner failure stops the run
        with pytest.raises(WorkerDiedError, match=r"learner\[1\]\.env: its worker died .* learner ranks are neither "
                                                  r"restarted nor re-issued .* resume from its last checkpoint"):
            ranks.call_one(1, "env", "RANK")
        assert ranks.restarts() == 0


_LOCAL_RANK_CHECK = """
import os
from system.config import ClusterConfig
from system.workers import make_worker_group
from tests.system.workers_fixture import Rank
keys = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
before = {key: os.environ.get(key) for key in keys}
with make_worker_group("learner", Rank, 1, ClusterConfig(mode="local")) as ranks:
    assert ranks.call("all_reduce", [1.0, 2.0]) == [(0, 1, [1.0, 2.0])]  # one rank: x * (0 + 1)
    ranks.call("close")
assert {key: os.environ.get(key) for key in keys} == before
print("OK")
"""


def test_local_learner_is_one_rank_and_restores_the_environment() -> None:
    # In a fresh interpreter: torch.distributed's default group is per process, and other tests in
    # this pytest worker may already have formed one.
    proc = subprocess.run([sys.executable, "-c", _LOCAL_RANK_CHECK], cwd=ray_cluster.PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
    with pytest.raises(ConfigError, match="local mode runs a single learner rank .* set cluster.num_learner_ranks: 1"):
        make_worker_group("learner", Rank, 2, LOCAL)


# ------------------------------------------------------------------------------------- fail fast


@pytest.mark.timeout(300)
def test_resources_beyond_the_cluster_fail_before_any_actor_starts(ray_cfg: ClusterConfig,
                                                                    scaled: dict[str, WorkerGroup]) -> None:
    too_many = ray_cfg.model_copy(update={"rollout_cpus": 2.0})
    with pytest.raises(ResourceError, match=r"rollout: 3 workers x 2 CPU = 6 CPU, but the cluster has 4 CPU in total "
                                            r"and this run's other worker groups hold 2 \(rollout x2: 2\); lower "
                                            r"cluster.rollout_cpus / cluster.rollout_gpus"):
        make_worker_group("rollout", Counter, 3, too_many)
    too_big = ray_cfg.model_copy(update={"reward_cpus": 5.0})
    with pytest.raises(ResourceError, match="reward: each worker asks for 5 CPU, but no node of the cluster has more than 4"):
        make_worker_group("reward", Counter, 1, too_big)
    gpus = ray_cfg.model_copy(update={"rollout_gpus": 1.0})
    with pytest.raises(ResourceError, match="rollout: each worker asks for 1 GPU, but no node .* more than 0 GPU"):
        make_worker_group("rollout", Counter, 1, gpus)
    # the module's `scaled` group holds 2 x 1 CPU; 3 more would make 5 > 4
    with pytest.raises(ResourceError, match=r"hold 2 \(rollout x2: 2\)"):
        make_worker_group("reward", Counter, 3, ray_cfg)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without GPUs")
@pytest.mark.timeout(300)
def test_nccl_without_gpus_fails_fast(ray_cfg: ClusterConfig) -> None:
    for mode in ("local", "ray"):
        cfg = ray_cfg.model_copy(update={"mode": mode, "learner_backend": "nccl", "learner_gpus": 1.0})
        with pytest.raises(ResourceError, match="'nccl', which needs CUDA GPUs, .* set cluster.learner_backend: gloo"):
            make_worker_group("learner", Rank, 1, cfg)
    with pytest.raises(ConfigError, match=r"cluster: learner_backend 'nccl' needs learner_gpus >= 1"):
        build_config({"cluster": {"learner_backend": "nccl"}})


_CONNECT = """
import sys
from system.config import ClusterConfig
from system.ray_cluster import ClusterConnectError, connect
try:
    connect(ClusterConfig(mode="ray", address=sys.argv[1] or None, connect_timeout_s=5.0))
except ClusterConnectError as err:
    print(err)
"""


def _connect_in_a_fresh_process(address: str, env: dict[str, str] | None = None) -> str:
    """connect() where Ray is not connected yet (this process may hold the module's cluster)."""
    run_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", _CONNECT, address], capture_output=True, text=True, timeout=120,
                          cwd=ray_cluster.PROJECT_ROOT, env=run_env, check=True).stdout


@pytest.mark.timeout(300)
def test_unreachable_address_fails_within_seconds() -> None:
    port = free_port()  # nothing listens there
    message = _connect_in_a_fresh_process(f"127.0.0.1:{port}")
    assert re.match(rf"cluster.address = '127.0.0.1:{port}': no Ray head answers there \(.*refused", message), message
    assert "ray start --head" in message  # "refused": it failed at once, not after a reconnect loop
    # what `ray job submit` sets for its entrypoint, here pointing nowhere
    message = _connect_in_a_fresh_process("", {"RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert message.startswith(f"RAY_ADDRESS = '127.0.0.1:{port}': no Ray head answers there"), message
    with pytest.raises(ConfigError, match=r"cluster: address 'http://127.0.0.1:8265' is a dashboard .* host:port"):
        build_config({"cluster": {"address": "http://127.0.0.1:8265"}})


def test_runtime_env_makes_the_project_importable() -> None:
    local = ray_cluster.worker_runtime_env(None, [HERE])
    assert local is not None
    assert local["env_vars"]["PYTHONPATH"].split(os.pathsep)[:2] == [str(ray_cluster.PROJECT_ROOT), str(HERE)]
    remote = ray_cluster.worker_runtime_env("10.0.0.5:6379")  # only computed: nothing is contacted
    assert remote is not None and "PYTHONPATH" not in remote["env_vars"]
    assert [Path(p).name for p in remote["py_modules"]] == ["system", "actors", "learner"]


# ------------------------------------------------------------------------------------- ray job submit

_JOB = ("from system.config import ClusterConfig; from system.workers import make_worker_group; "
        "from tests.system.workers_fixture import Counter; "
        "g = make_worker_group('rollout', Counter, 2, ClusterConfig(mode='ray', rollout_cpus=0.5), index_kwarg='start'); "
        "print('RESULT', g.map('square', [1, 2, 3]), g.call('add', 1))")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_submit_helper_runs_jobs_on_a_token_auth_head_and_exits_with_their_status() -> None:
    with ray_cluster.LocalHead.start(num_cpus=2) as head:
        def submit(*entrypoint: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "deploy/submit.py", "--address", head.dashboard_url, "--", *entrypoint],
                                  cwd=ray_cluster.PROJECT_ROOT, capture_output=True, text=True, timeout=300)

        ok = submit("python", "-c", _JOB)  # the job's driver joins the head (RAY_ADDRESS) and builds a worker group
        assert ok.returncode == 0, ok.stderr
        # Counter(start=0), Counter(start=1): squares [1, 4, 9]; add 1 -> [0 + 1, 1 + 1]
        assert "RESULT [1, 4, 9] [1, 2]" in ok.stdout and "SUCCEEDED" in ok.stderr
        failed = submit("python", "-c", "import sys; sys.exit(3)")
        assert failed.returncode == 1 and "FAILED (Job entrypoint command failed with exit code 3" in failed.stderr
        unauthorised = subprocess.run([sys.executable, "deploy/submit.py", "--auth", "disabled", "--address",
                                       head.dashboard_url, "--", "python", "-c", "print(1)"],
                                      cwd=ray_cluster.PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        assert unauthorised.returncode == 2 and "Unauthorized" in unauthorised.stderr  # token auth is on
    assert head.process.poll() is not None and not _processes_using(head.temp_dir)  # stopped, all of it


def _processes_using(temp_dir: Path) -> list[str]:
    """Command lines (read from /proc) that name ``temp_dir``: the head's Ray processes still alive."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        if str(temp_dir) in text:
            found.append(text)
    return found
