"""Several Ray nodes on 127.0.0.1, each with its own custom resources (as KubeRay worker groups get them
from ``rayStartParams.resources``): rollout and reward workers land on the node kind their
``cluster.<role>_resources`` name, learner ranks on two different nodes that still form one gloo group
through the rendezvous address of rank 0's node, and a request no node can serve fails at once.
The slow test runs the RL loop end to end on such a cluster with the filesystem weight transport.

The nodes are raylets of ``ray.cluster_utils.Cluster`` started by this process with multi-node mode off
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: every node keeps 127.0.0.1) and token authentication on; they
share the machine's cores, so CPUs here are logical. What one machine cannot show (NCCL between GPUs of
different hosts, a real network) is written down in deploy/README.md."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from placement_fixture import NodeRank, Where  # this directory: Ray workers get it on their PYTHONPATH

from system import ray_cluster
from system.config import ClusterConfig, load_config
from system.workers import ResourceError, make_worker_group

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# node name -> (logical CPUs, custom resources): a head that takes no worker, two learner nodes, one node
# for rollout and reward workers.
NODES = {
    "head": (1, {"head_node": 1.0}),
    "learner-a": (1, {"learner_node": 1.0}),
    "learner-b": (1, {"learner_node": 1.0}),
    "rollout": (1, {"rollout_node": 2.0, "reward_node": 2.0}),
}


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[ClusterConfig, dict[str, str]]]:
    """The 4-node cluster, this process connected to it; yields the config to join it and node ids by name."""
    import ray
    from ray.cluster_utils import Cluster

    ray_cli = Path(sys.executable).with_name("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    subprocess.run([str(ray_cli), "get-auth-token", "--generate"], env=env, check=True, capture_output=True,
                   timeout=60)  # ~/.ray/auth_token, if there is none yet (an existing token is kept)
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    ray_cluster._loopback_only()  # before any node starts: all of them on 127.0.0.1
    ray_cluster._set_auth_mode("token")
    cluster = Cluster(shutdown_at_exit=True)
    ids: dict[str, str] = {}
    try:
        for name, (cpus, resources) in NODES.items():
            extra = {"include_dashboard": False} if name == "head" else {}
            node = cluster.add_node(num_cpus=cpus, resources=resources, object_store_memory=80 * 2**20, **extra)
            ids[name] = node.node_id
        cfg = ClusterConfig(mode="ray", address=cluster.address, namespace="test-multinode",
                            startup_timeout_s=120.0)
        ray_cluster.connect(cfg, extra_pythonpath=[HERE], log_to_driver=False)
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert alive == set(ids.values())
        yield cfg, ids
    finally:
        ray_cluster.shutdown()
        cluster.shutdown()  # stops the raylets and GCS this process started, by their processes
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_roles_land_on_the_nodes_their_resources_name(nodes: tuple[ClusterConfig, dict[str, str]]) -> None:
    base, ids = nodes
    cfg = base.model_copy(update={"rollout_cpus": 0.25, "reward_cpus": 0.25, "learner_cpus": 0.5,
                                  "rollout_resources": {"rollout_node": 1.0}, "reward_resources": {"reward_node": 1.0},
                                  "learner_resources": {"learner_node": 1.0}, "learner_placement": "SPREAD"})
    with make_worker_group("rollout", Where, 2, cfg) as rollout, make_worker_group("reward", Where, 2, cfg) as reward:
        assert rollout.call("node") == [ids["rollout"]] * 2
        assert reward.call("node") == [ids["rollout"]] * 2
    with make_worker_group("learner", NodeRank, 2, cfg) as ranks:
        reports = ranks.call("report")
    # one learner_node per node: the two ranks must sit on the two learner nodes, one each
    assert sorted(r["node"] for r in reports) == sorted([ids["learner-a"], ids["learner-b"]])
    assert [r["rank"] for r in reports] == [0, 1] and all(r["sum"] == 3.0 for r in reports)  # 1 + 2
    # the rendezvous: rank 0's node address and one port there, the same for every rank
    assert {(r["MASTER_ADDR"], r["MASTER_PORT"], r["WORLD_SIZE"]) for r in reports} == {
        ("127.0.0.1", reports[0]["MASTER_PORT"], "2")}


def test_a_resource_no_node_has_fails_before_any_actor_starts(nodes: tuple[ClusterConfig, dict[str, str]]) -> None:
    base, _ = nodes
    cfg = base.model_copy(update={"rollout_cpus": 0.25, "rollout_resources": {"gpu_h200": 1.0}})
    with pytest.raises(ResourceError, match=r"rollout: 1 workers x 1 'gpu_h200' \(cluster.rollout_resources\)"):
        make_worker_group("rollout", Where, 1, cfg)
    learners = base.model_copy(update={"learner_cpus": 0.5, "learner_resources": {"learner_node": 1.0}})
    with pytest.raises(ResourceError, match=r"learner: 3 workers x 1 'learner_node'.*2 'learner_node' in total"):
        make_worker_group("learner", NodeRank, 3, learners)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rl_run_with_learner_ranks_on_two_nodes(nodes: tuple[ClusterConfig, dict[str, str]], tmp_path: Path) -> None:
    """configs/smoke.yaml for 2 steps: 2 learner ranks (one per learner node, DeepSpeed over gloo), rollout
    and reward workers on the rollout node, new weights through the filesystem transport (a directory every
    node sees, as a PersistentVolumeClaim is on KubeRay)."""
    base, _ = nodes
    cfg = load_config(REPO / "configs" / "smoke.yaml", [
        "cluster.mode=ray", f"cluster.address={base.address}", "cluster.namespace=test-multinode-run",
        "cluster.num_learner_ranks=2", "cluster.learner_cpus=0.5", "cluster.learner_placement=SPREAD",
        "cluster.learner_resources={learner_node: 1}", "cluster.rollout_cpus=0.25",
        "cluster.rollout_resources={rollout_node: 1}", "cluster.reward_cpus=0.25",
        "cluster.reward_resources={reward_node: 1}", "cluster.startup_timeout_s=300",
        "rollout.weight_transport=filesystem", f"rollout.weight_dir={tmp_path / 'weights'}",
        "rollout.steps=2", f"output_dir={tmp_path / 'run'}", "logging.progress=false"])
    from system.driver import train
    from tests.conftest import run_records

    summary = train(cfg)
    records = run_records(tmp_path / "run")
    assert summary["version"] == 2 and [m["step"] for m in records] == [1, 2]
    assert all(math.isfinite(v) for m in records for v in m.values() if isinstance(v, float))
    assert any((tmp_path / "weights").iterdir())  # the learner published through the shared directory
