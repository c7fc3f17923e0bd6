"""``rollout.mode: stream`` on a real local Ray cluster (127.0.0.1): the rollout actor generates while the
learner trains, and a kill -9 of the rollout actor mid-stream loses no prompt and trains on none twice
(its in-flight groups are generated again, once, by the restarted actor)."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
import torch

from system.config import load_config
from system.driver import train
from tests.conftest import REPO
from tests.system.test_ray_run import RAY, killer, metrics

pytestmark = pytest.mark.slow


def test_a_stream_survives_kill_9_of_its_rollout_actor(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "smoke.yaml",
                      [*RAY, f"output_dir={tmp_path}", "rollout.steps=4", "logging.progress=false",
                       "rollout.mode=stream", "rollout.max_staleness=1"])
    killed: list[str] = []
    thread = threading.Thread(target=killer, args=(tmp_path, ("rollout",), killed), daemon=True)
    thread.start()
    summary = train(cfg)
    thread.join(timeout=5)
    assert killed == ["rollout"]
    records = metrics(tmp_path)
    assert summary["version"] == 4 and [m["step"] for m in records] == [1, 2, 3, 4]
    assert records[-1]["system/rollout_restarts"] >= 1
    assert [m["system/groups_admitted"] for m in records] == [2.0, 4.0, 6.0, 8.0]
    assert max(m["system/staleness_max"] for m in records) <= 1.0
    saved = torch.load(tmp_path / "checkpoints" / "step-4" / "stream.pt", weights_only=False)
    open_seqs = [seq for seq, _ in saved["prompts"]["open"]]
    seqs = sorted(int(i.rsplit(":t", 1)[1]) for i in saved["buffer"]["seen"])
    assert len(seqs) == len(set(seqs))  # every group delivered once
    assert sorted(seqs + open_seqs) == list(range(saved["prompts"]["next_seq"]))  # every prompt accounted for
    stats = json.loads((tmp_path / "checkpoints" / "step-4" / "driver.json").read_text())["buffer"]
    assert stats["admitted"] == 8 and stats["dropped_duplicate"] == 0
    assert len(seqs) == stats["admitted"] + len(saved["buffer"]["groups"]) + stats["dropped_stale"]
    for m in records:
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float))
        assert 0.0 <= m["stream/actor_idle_fraction"] <= 1.0
