"""RunLogger: metrics.jsonl with and without wandb, events, sparse samples and histograms; an offline
wandb run holds the expected keys (read back from its run file, no network); the dashboard's wandb
workspace object."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from system.config import load_config
from system.monitoring.dashboard import PANELS, build_workspace
from system.monitoring.logger import RunLogger, histogram
from system.monitoring.monitor import MonitorEvent
from system.monitoring.records import read_records
from system.monitoring.wandb_file import find_offline_run, read_offline_run, wandb_records

RAW = {"step": 0, "rollout/reward_mean": 0.25, "loss/ratio_max": 3.0, "loss/bypass_frac": 0.1,
       "timing/broadcast": 0.5, "grad/pre_clip_norm": 1.5, "system/policy_version": 2.0, "loss/kl": math.nan}
EVENT = MonitorEvent("grad_spike", 2, "alert", "grad/pre_clip_norm 51 exceeds 10 x the rolling median 1",
                     {"pre_clip_norm": 51.0, "median": 1.0})


def log_steps(logger: RunLogger, steps: int) -> None:
    for step in range(1, steps + 1):
        logger.log(step, {**RAW, "rollout/reward_mean": 0.25 * step},
                   samples=[{"prompt": "2+2", "completion": "x" * 50, "reward": 1.0}, {"prompt": "p2", "extra": 3}],
                   histograms={"ratio": [1.0, 2.0, 3.0, math.inf], "advantage": [-1.0, 1.0]})
        if step == 2:
            logger.event(step, EVENT)


def test_histogram_counts() -> None:
    h = histogram([0.0, 1.0, 1.0, 4.0, math.nan], bins=4)
    # finite values 0, 1, 1, 4 in bins [0,1) [1,2) [2,3) [3,4]: 1, 2, 0, 1
    assert h["counts"] == [1, 2, 0, 1] and h["edges"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert (h["count"], h["nonfinite"], h["mean"], h["min"], h["max"]) == (4, 1, 1.5, 0.0, 4.0)
    assert histogram([], bins=4) == {"count": 0, "nonfinite": 0, "edges": [], "counts": []}


def test_jsonl_without_wandb(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(None, ["logging.table_every=2", "logging.histogram_every=3", "logging.table_rows=1",
                             "logging.table_max_chars=16"])
    with RunLogger(cfg, tmp_path / "run") as logger:
        log_steps(logger, 3)
        assert logger.run is None
    assert not (tmp_path / "run" / "wandb").exists()
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    assert [(r["type"], r.get("step")) for r in records] == [
        ("run", None), ("metrics", 1), ("metrics", 2), ("event", 2), ("metrics", 3),
        ("histogram", 3), ("histogram", 3)]
    run, m1 = records[0], records[1]
    assert run["config"]["monitor"]["action"] == "alert" and run["wandb_mode"] == "disabled"
    assert {k: v for k, v in m1.items() if k not in ("time", "kl/ref")} == {
        "type": "metrics", "step": 1, "rollout/reward_mean": 0.25, "ratio/max": 3.0, "clip/bypass": 0.1,
        "timing/sync": 0.5, "grad/pre_clip_norm": 1.5, "system/policy_version": 2.0}
    assert math.isnan(m1["kl/ref"])
    assert '"kl/ref": "NaN"' in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[1]
    event = records[3]
    assert (event["detector"], event["action"], event["evidence"]) == ("grad_spike", "alert", EVENT.evidence)
    ratio = records[5]
    assert (ratio["name"], ratio["count"], ratio["nonfinite"], sum(ratio["counts"])) == ("ratio", 3, 1, 3)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [2]  # table_every 2 of steps 1..3
    assert samples[0]["rows"] == [{"prompt": "2+2", "completion": "x" * 16 + "... [34 more chars]", "reward": 1.0}]
    assert "collapse monitor, step 2: grad_spike -> alert" in caplog.text


def test_logger_appends_on_restart(tmp_path: Path) -> None:
    cfg = load_config(None, [])
    for _ in range(2):
        with RunLogger(cfg, tmp_path) as logger:
            logger.log(1, {"x": 1.0})
    assert [r["type"] for r in read_records(tmp_path / "metrics.jsonl")] == ["run", "metrics", "run", "metrics"]


def test_offline_wandb_run_holds_the_expected_keys(tmp_path: Path) -> None:
    cfg = load_config(None, ["logging.wandb_mode=offline", "logging.table_every=40", "logging.histogram_every=10",
                             "logging.run_name=probe-run", "logging.tags=[t1, t2]"])
    with RunLogger(cfg, tmp_path / "run") as logger:
        log_steps(logger, 120)  # enough rows that the run file spans several 32 KiB blocks
        run_id = logger.run.id
    path = find_offline_run(tmp_path / "run" / "wandb")
    assert run_id in path.name and path.stat().st_size > 2 * 32768
    run = read_offline_run(path, wait_s=60)
    assert run.finished
    expected = {"step", "rollout/reward_mean", "ratio/max", "clip/bypass", "timing/sync", "grad/pre_clip_norm",
                "system/policy_version", "kl/ref", "monitor/grad_spike", "samples/_type", "hist/ratio/_type",
                "hist/advantage/bins"}
    assert expected <= run.logged_keys()
    assert "loss/ratio_max" not in run.logged_keys()  # renamed before logging
    metric_rows = [row for row in run.history if "rollout/reward_mean" in row]
    assert [row["step"] for row in metric_rows] == list(range(1, 121))
    assert metric_rows[-1]["rollout/reward_mean"] == 30.0  # 0.25 * 120
    assert sum("samples/_type" in row for row in run.history) == 3  # steps 40, 80, 120
    assert run.config["monitor"]["nonfinite_action"] == "rollback" and run.config["logging"]["wandb_mode"] == "offline"
    assert run.tags == ["t1", "t2"]
    assert run.alerts == [{"title": "grad_spike at step 2 (alert)", "level": "WARN",
                           "text": EVENT.message + "\nevidence: pre_clip_norm=51, median=1"}]
    assert run.summary["rollout/reward_mean"] == 30.0
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    assert records[0]["wandb_run_id"] == run_id and sum(r["type"] == "metrics" for r in records) == 120

    bad = tmp_path / "bad.wandb"
    shutil.copy(path, bad)
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad.wandb: bad checksum at byte \d+"):
        list(wandb_records(bad))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_workspace_is_built_from_the_panels_without_network() -> None:
    workspace = build_workspace("entity", "project", "view")
    (section,) = workspace.sections
    assert [p.title for p in section.panels] == [p.title for p in PANELS]
    assert [list(p.y) for p in section.panels] == [list(p.keys) for p in PANELS]
    assert all(p.x == "step" for p in section.panels)
    assert [bool(p.log_y) for p in section.panels] == [p.log_y for p in PANELS]
