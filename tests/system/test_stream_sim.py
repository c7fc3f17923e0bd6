"""bench/stream_sim.py, the discrete-event model of sync / one-step-off / stream: its arithmetic on cases
whose answer is known by hand, and the JSON line of a small prediction."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SIM = Path(__file__).resolve().parents[2] / "bench" / "stream_sim.py"


@pytest.fixture(scope="module")
def sim() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stream_sim_bench", SIM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_batch_waits_for_its_slowest_gpu(sim: ModuleType) -> None:
    assert sim.makespan([3.0, 1.0, 1.0, 1.0], gpus=2) == (3.0, 6.0)  # 3 on one GPU, 1+1+1 on the other


def test_equal_groups_give_the_hand_computed_step_times(sim: ModuleType) -> None:
    """decode 10 s a group without spread, 2 groups per GPU, learner 1 s a group, no sync costs."""
    costs = sim.Costs(decode_s=10.0, decode_cv=0.0, forward_s=0.0, fwd_bwd_s=1.0, mc_samples=1, allreduce_s=0.0,
                      sync_s=0.0, colocated_sync_s=0.0, swap_s=0.0, groups_per_gpu=2, steps=10)
    rng = random.Random(0)
    # sync on 2 GPUs: 4 groups = 2 rounds of 10 s, then 4 groups / 2 GPUs x 1 s = 2 s
    assert sim.run_sync(costs, 2, rng)["seconds_per_step"] == pytest.approx(22.0)
    # stream on 3 rollout + 1 learner: 8 groups a step at 3 groups per 10 s; the learner (8 s) keeps up
    stream = sim.run_stream(costs, 3, 1, rng)
    assert stream["seconds_per_step"] == pytest.approx(80 / 3, rel=0.15)
    assert stream["actor_idle"] < 0.1 and set(stream["staleness"]) <= {"0", "1"}


def test_the_prediction_is_one_json_line(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(SIM), "--gpus", "4", "--steps", "5"], capture_output=True, text=True,
                         check=True, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    row = result["predictions"]["4"]
    assert set(row) == {"sync", "async", "stream"} and row["sync"]["speedup_over_sync"] == 1.0
    assert all(r["steps_per_hour"] > 0 for r in row.values())
