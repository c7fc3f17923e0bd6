"""RL on a block-diffusion model end to end in local mode: a few steps of the tiny block model (block
decoding with the KV cache of finished blocks, ratios from the staircase block ELBO) on the synthetic
copy task change the parameters, advance the policy version and log finite metrics, for StableDRL
(sequence-level ratios) and GRPO (token-level ratios from the per-token mean log-probs)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from system.config import load_config
from system.driver import train
from system.models import load_model
from system.models.build import new_tiny_model
from tests.conftest import run_records

BLOCK = [
    "data.task=copy", "data.num_train=32", "data.num_test=4", "data.max_prompt_length=64",
    "model.tiny.hidden_size=32", "model.tiny.num_hidden_layers=2", "model.tiny.intermediate_size=64",
    "model.tiny.attention=block", "model.tiny.block_size=4", "decoding.gen_length=8", "decoding.block_length=4",
    "decoding.steps=4", "decoding.temperature=1.0", "decoding.use_cache=true", "rollout.group_size=4",
    "rollout.prompts_per_step=2", "rollout.steps=2", "learner.micro_batch_size=8", "learner.lr=1e-3",
    "algorithm.estimator=staircase_elbo", "algorithm.num_mc_samples=2", "logging.progress=false",
]


@pytest.mark.parametrize("algorithm", ["stabledrl", "grpo"])
def test_block_model_rl_updates_publishes_and_logs(tmp_path: Path, algorithm: str) -> None:
    cfg = load_config(None, [*BLOCK, f"output_dir={tmp_path}", f"algorithm.name={algorithm}"])
    summary = train(cfg)
    metrics = run_records(tmp_path)
    assert summary["version"] == 2 and [m["system/policy_version"] for m in metrics] == [1.0, 2.0]
    for m in metrics:
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float)), m
        assert m["rollout/groups"] == 2.0 and m["grad/pre_clip_norm"] > 0
    initial, _ = new_tiny_model(cfg.model, cfg.seed)
    final = load_model(summary["checkpoint"])
    assert final.spec.attention == "block" and final.spec.block_size == 4
    before = initial.net.state_dict()
    changed = [k for k, v in final.net.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "no parameter changed in 2 RL steps"


@pytest.mark.slow
def test_ray_mode_matches_local_mode(tmp_path: Path) -> None:
    """The same 2 steps with rollout, reward and learner as Ray actors on a local 127.0.0.1 cluster:
    every seed is explicit, so the rewards and the final weights equal the local run's."""
    from system import ray_cluster

    ray_overrides = ["cluster.mode=ray", "cluster.num_cpus=2", "cluster.rollout_cpus=0.5", "cluster.reward_cpus=0.5",
                     "cluster.learner_cpus=1.0", "cluster.namespace=test-block-rl"]
    runs = {}
    try:
        for mode, extra in (("local", []), ("ray", ray_overrides)):
            cfg = load_config(None, [*BLOCK, f"output_dir={tmp_path / mode}", *extra])
            runs[mode] = train(cfg)
    finally:
        ray_cluster.shutdown()
    local, remote = (load_model(runs[m]["checkpoint"]).net.state_dict() for m in ("local", "ray"))
    assert runs["ray"]["version"] == 2
    assert runs["ray"]["reward_last"] == pytest.approx(runs["local"]["reward_last"], rel=1e-6)
    for key, value in local.items():
        torch.testing.assert_close(remote[key], value, atol=1e-6, rtol=1e-5)
