"""RL learns: 40 StableDRL steps of the tiny model on the synthetic copy task (graded reward, from a
random init) raise the rollout reward well above where it started, and the same run with a learning rate
of 1e-9 (the control: same prompts, same sampling) does not move it."""

from __future__ import annotations

import statistics
from pathlib import Path

from system.config import load_config
from system.driver import train
from tests.conftest import REPO, run_records

STEPS = 40


def rewards(run_dir: Path, lr: float) -> list[float]:
    cfg = load_config(REPO / "configs" / "smoke.yaml",
                      [f"output_dir={run_dir}", f"rollout.steps={STEPS}", "rollout.prompts_per_step=8",
                       f"learner.lr={lr}", "logging.progress=false", "logging.wandb_mode=disabled"])
    train(cfg)
    records = run_records(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    return [r["rollout/reward_mean"] for r in records]


def test_stabledrl_raises_the_reward_of_the_copy_task(tmp_path: Path) -> None:
    trained, control = rewards(tmp_path / "lr", 1e-3), rewards(tmp_path / "frozen", 1e-9)
    first, last = statistics.fmean(trained[:10]), statistics.fmean(trained[-10:])
    control_first, control_last = statistics.fmean(control[:10]), statistics.fmean(control[-10:])
    # measured: 0.057 -> 0.117 trained; the control stays within sampling noise of where it starts
    assert last > first + 0.03, (first, last)
    assert abs(control_last - control_first) < 0.02, (control_first, control_last)
    assert last > control_last + 0.03, (last, control_last)
