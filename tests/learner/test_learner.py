"""The DeepSpeed learner: every loss updates the policy from fixed rollouts with finite metrics, and
2 CPU ranks (gloo, torchrun) give the same updated weights as 1 rank on the same groups, and a checkpoint
loaded into a live learner (the rollback path) replays the next update exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learner.learner import free_port
from tests.conftest import REPO

JOB = REPO / "tests" / "learner" / "learner_job.py"


def run_job(out: Path, nproc: int, *overrides: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DS_BUILD_OPS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(JOB), str(out),
           *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return load_file(str(out / "weights.safetensors")), json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_two_ranks_equal_one_rank(tmp_path: Path, zero_stage: int) -> None:
    one, m1 = run_job(tmp_path / "one", 1, f"learner.zero_stage={zero_stage}")
    two, m2 = run_job(tmp_path / "two", 2, f"learner.zero_stage={zero_stage}")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-6, rtol=1e-5, msg=name)
    assert all(torch.isfinite(torch.tensor(v)) for v in m1.values())
    assert m1["train/updates"] == m2["train/updates"] == 2.0


@pytest.mark.parametrize(("loss", "estimator"), [("stabledrl", "elbo"), ("grpo", "elbo"),
                                                  ("diffu_grpo", "mean_field"), ("agrpo", "agrpo"),
                                                  ("stabledrl", "spg")])
def test_every_loss_updates_the_policy(loss: str, estimator: str) -> None:
    from learner.learner import Learner
    from system.config import load_config
    from tests.learner.learner_job import BASE, fixed_groups

    coupling = "shared" if estimator in ("mean_field",) else "auto"
    learner = Learner(load_config(None, [*BASE, f"algorithm.name={loss}", f"algorithm.estimator={estimator}",
                                         f"algorithm.coupling={coupling}"]))
    groups = fixed_groups()
    if estimator == "agrpo":  # AGRPO needs generation-time log-probs: take them from the policy itself
        for g in groups:
            for r in g.rollouts:
                r.logprobs = torch.full((r.completion_ids.numel(),), -4.0)
                r.entropies = torch.ones(r.completion_ids.numel())
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    metrics = learner.train_on(groups)
    after = learner.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    assert metrics["train/updates"] == 2.0 and metrics["grad/pre_clip_norm"] > 0


def test_a_non_finite_micro_batch_keeps_the_accumulation_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """4 micro-batches an update; the 2nd of the first update has a NaN loss: train_on raises, DeepSpeed's
    micro-step count is back on an update boundary, and the next batch trains normally."""
    from learner.learner import Learner
    from system.config import load_config
    from tests.conftest import poison_loss_input
    from tests.learner.learner_job import BASE, fixed_groups

    learner = Learner(load_config(None, BASE))
    poison_loss_input(monkeypatch, lambda n: n == 2)
    engine = learner.engine
    assert engine.gradient_accumulation_steps() == 4
    with pytest.raises(FloatingPointError, match="non-finite"):
        learner.train_on(fixed_groups())
    assert engine.micro_steps % 4 == 0 and engine.global_steps == 1  # the update was finished, not left open
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    metrics = learner.train_on(fixed_groups())
    assert engine.micro_steps % 4 == 0 and engine.global_steps == 3
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    assert any(not torch.equal(before[k], v) for k, v in learner.state_dict().items())


def test_loading_a_checkpoint_in_process_replays_the_update_exactly(tmp_path: Path) -> None:
    """The driver's rollback path: a live learner loads an earlier checkpoint (model, Adam moments, LR
    schedule, update count) and the next update equals the one made straight after saving it. Also
    checks DeepSpeed's counters: micro-steps stay on an update boundary, global steps rewind."""
    from learner.learner import Learner
    from system.config import load_config
    from tests.learner.learner_job import BASE, fixed_groups

    learner = Learner(load_config(None, [*BASE, "learner.warmup_steps=4"]))
    engine = learner.engine
    learner.train_on(fixed_groups())  # Adam moments and the warm-up are not at their initial values
    saved_steps, saved_lr = engine.global_steps, learner.scheduler.get_last_lr()[0]
    learner.save_checkpoint(str(tmp_path / "ckpt"))
    learner.train_on(fixed_groups())
    straight = {k: v.clone() for k, v in learner.state_dict().items()}
    learner.train_on(fixed_groups())  # the future a rollback abandons
    assert learner.load_checkpoint(str(tmp_path / "ckpt")) == 2
    assert engine.global_steps == saved_steps == 2 and learner.scheduler.get_last_lr()[0] == saved_lr
    assert engine.micro_steps % engine.gradient_accumulation_steps() == 0
    learner.train_on(fixed_groups())
    replayed = learner.state_dict()
    assert all(torch.equal(straight[k], replayed[k]) for k in straight)


def test_step_metrics_carry_the_loss_and_the_rate_the_updates_used() -> None:
    """loss/value is logged; train/lr is the mean rate of this step's updates (warm-up 4 updates, 2 a step:
    1/4 and 2/4 of lr in step 1, 3/4 and 1 in step 2), not the next step's rate."""
    from learner.learner import Learner
    from system.config import load_config
    from tests.learner.learner_job import BASE, fixed_groups

    learner = Learner(load_config(None, [*BASE, "learner.warmup_steps=4"]))
    first = learner.train_on(fixed_groups())
    second = learner.train_on(fixed_groups())
    assert first["train/lr"] == pytest.approx(1e-3 * (0.25 + 0.5) / 2)
    assert second["train/lr"] == pytest.approx(1e-3 * (0.75 + 1.0) / 2)
    assert torch.isfinite(torch.tensor(first["loss/value"]))
