"""The RL loop on a real local Ray cluster (127.0.0.1): rollout, reward and learner as Ray actors.
A 3-step run updates the policy; killing a rollout actor and a reward actor with kill -9 mid-run still
finishes the run with every group trained on exactly once."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from system.config import load_config
from system.driver import train
from tests.conftest import REPO, run_records

pytestmark = pytest.mark.slow

RAY = ["cluster.mode=ray", "cluster.num_cpus=2", "cluster.rollout_cpus=0.5", "cluster.reward_cpus=0.5",
       "cluster.learner_cpus=1.0", "cluster.max_restarts=2"]


def metrics(run_dir: Path) -> list[dict]:
    return run_records(run_dir) if (run_dir / "metrics.jsonl").is_file() else []


def killer(run_dir: Path, roles: tuple[str, ...], done: list[str]) -> None:
    """kill -9 one actor of each role (found by its name, ``ROLE-xxxxxxxx``) at once, as soon as step 1
    is logged. The PIDs are read as soon as the actors exist: a busy actor answers ``pid()`` only after
    its running call, so asking after step 1 could kill it after its last call (its restart never seen)."""
    import ray

    deadline = time.monotonic() + 600
    pids: dict[str, int] = {}
    while len(pids) < len(roles) and time.monotonic() < deadline:
        if ray.is_initialized():
            for entry in ray.util.list_named_actors(all_namespaces=True):
                role = next((r for r in roles if entry["name"].startswith(f"{r}-")), None)
                if role and role not in pids:
                    pids[role] = ray.get(ray.get_actor(entry["name"], namespace=entry["namespace"]).pid.remote())
        time.sleep(0.2)
    while not metrics(run_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    for role, pid in pids.items():
        os.kill(pid, signal.SIGKILL)
        done.append(role)


def test_ray_run_survives_kill_9_of_rollout_and_reward_actors(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "smoke.yaml",
                      [*RAY, f"output_dir={tmp_path}", "rollout.steps=4", "logging.progress=false"])
    killed: list[str] = []
    thread = threading.Thread(target=killer, args=(tmp_path, ("rollout", "reward"), killed), daemon=True)
    thread.start()
    summary = train(cfg)
    thread.join(timeout=5)
    assert sorted(killed) == ["reward", "rollout"]
    records = metrics(tmp_path)
    assert summary["version"] == 4 and [m["step"] for m in records] == [1, 2, 3, 4]
    # every step trained on exactly prompts_per_step fresh groups: none lost, none twice
    assert [m["system/groups_admitted"] for m in records] == [2.0, 4.0, 6.0, 8.0]
    assert records[-1]["system/rollout_restarts"] + records[-1]["system/reward_restarts"] >= 2
    for m in records:
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float))


@pytest.mark.timeout(900)
def test_ray_job_submit_runs_two_rl_steps_on_a_token_auth_head(tmp_path: Path) -> None:
    """The documented launch: a head on 127.0.0.1 with token auth (started and stopped by the test),
    `ray job submit` with deploy/runtime_env.yaml, 2 RL steps of configs/smoke_ray.yaml, SUCCEEDED."""
    import subprocess
    import sys

    from system import ray_cluster

    run_dir = tmp_path / "job"
    with ray_cluster.LocalHead.start(num_cpus=2) as head:
        env = {**os.environ, "RAY_AUTH_MODE": "token"}
        proc = subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", head.dashboard_url,
             "--runtime-env", "deploy/runtime_env.yaml", "--", "stabledrl", "train", "--config",
             "configs/smoke_ray.yaml", "--run-dir", str(run_dir), "--set", "rollout.steps=2",
             "--set", "logging.progress=false"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=800)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "succeeded" in (proc.stdout + proc.stderr).lower()  # "Job ... succeeded"
    assert head.process.poll() is not None  # the test stopped the head it started
    assert [m["step"] for m in metrics(run_dir)] == [1, 2]
