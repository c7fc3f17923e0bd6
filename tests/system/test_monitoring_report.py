"""`stabledrl report RUN_DIR`: a PNG of the dashboard (its size, not blank) and a self-contained HTML page
(nothing to fetch) from a small recorded run; errors name the file."""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import random
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from system.config import load_config
from system.errors import DataError
from system.monitoring.cli import add_report_parser
from system.monitoring.dashboard import PANELS
from system.monitoring.logger import RunLogger
from system.monitoring.monitor import CollapseMonitor
from system.monitoring.report import load_run, render_png


def record_run(run_dir: Path, steps: int = 40) -> None:
    """A run whose reward collapses from step 25, with a gradient spike at step 12 and a NaN at step 30,
    through the real logger and monitor (stop on NaN, alert otherwise)."""
    cfg = load_config(None, ["monitor.reward_window=4", "monitor.nonfinite_action=stop",
                             "monitor.grad_spike_min_history=5"])
    rng = random.Random(0)
    monitor = CollapseMonitor(cfg.monitor)
    with RunLogger(cfg, run_dir) as logger:
        for s in range(1, steps + 1):
            reward = 0.6 + rng.gauss(0, 0.02) if s < 25 else max(0.0, 0.6 - 0.08 * (s - 24))
            raw = {"rollout/reward_mean": reward, "rollout/reward_std": 0.1, "rollout/accuracy": reward / 2,
                   "loss/ratio_std": 0.05 * s, "loss/ratio_max": 1.0 + s, "loss/ratio_p99": 1.0 + s / 2,
                   "loss/log_ratio_std": 0.2 + 0.01 * s, "loss/bypass_frac": 0.005 * s,
                   "loss/bypass_grad_share": 0.01 * s, "loss/ess_fraction": 1.0 - 0.01 * s,
                   "grad/pre_clip_norm": 30.0 if s == 12 else 1.0 + 0.01 * s, "grad/spikes": float(s == 12),
                   "kl/drift": 0.001 * s * s, "loss/kl": math.nan if s == 30 else 0.01}
            for event in monitor.observe(s, raw):
                logger.event(s, event)
            logger.log(s, raw)


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(k, v or "") for k, v in attrs]


def test_report_cli_writes_png_and_self_contained_html(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    record_run(run_dir)
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers())
    args = parser.parse_args(["report", str(run_dir)])
    assert args.func(args) == 0

    png = (run_dir / "report.png").read_bytes()
    image = Image.open(io.BytesIO(png)).convert("L")
    rows = -(-len(PANELS) // 2)
    assert image.size == (1400, int(320 * rows))  # 2 columns x 7 in, 3.2 in per row, at 100 dpi
    pixels = np.asarray(image, dtype=np.float64)
    assert pixels.std() > 20.0  # not blank: lines, text and axes on white
    assert (pixels < 128).mean() > 0.01

    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    links = Links()
    links.feed(page)
    assert not {"script", "link", "iframe", "object"} & set(links.tags)
    sources = [v for k, v in links.attrs if k in ("src", "href")]
    assert sources and all(v.startswith("data:image/png;base64,") for v in sources)
    assert base64.b64decode(sources[0].removeprefix("data:image/png;base64,")) == png
    # the events the monitor recorded are in the page's table. Reward collapse (window 4, drop 0.2): rewards
    # 0.52, 0.44, 0.36, 0.28 at steps 25-28, so the step-28 average is 1.6 / 4 = 0.40, about 0.215 below the
    # noisy plateau's best average (~0.615); at step 27 it is (~0.6 + 1.32) / 4 = ~0.48 (fall ~0.135).
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if '"type": "event"' in line]
    assert [(e["detector"], e["step"], e["action"]) for e in events] == [
        ("grad_spike", 12, "alert"), ("reward_collapse", 28, "alert"), ("nonfinite", 30, "stop")]
    assert "Collapse events (3)" in page and "non-finite metrics: kl/ref" in page
    assert "<td>events: stop</td><td>1</td>" in page


def test_load_run_reads_series_and_events(tmp_path: Path) -> None:
    record_run(tmp_path, steps=30)
    data = load_run(tmp_path)
    assert data.steps == list(range(1, 31))
    steps, values = data.series("ratio/max")
    assert steps == data.steps and values[:2] == [2.0, 3.0]  # 1 + s
    _, kl = data.series("kl/ref")
    assert math.isnan(kl[29]) and kl[0] == 0.01
    assert data.config["monitor"]["reward_window"] == 4


def test_empty_run_renders_panels_with_no_data(tmp_path: Path) -> None:
    with RunLogger(load_config(None, []), tmp_path):
        pass
    image = Image.open(io.BytesIO(render_png(load_run(tmp_path)))).convert("L")
    assert np.asarray(image, dtype=np.float64).std() > 5.0  # titles and axes


def test_missing_metrics_names_the_file(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers())
    args = parser.parse_args(["report", str(tmp_path / "nope")])
    with pytest.raises(DataError, match=r"nope/metrics.jsonl: not found"):
        args.func(args)
