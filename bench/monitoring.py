"""What monitoring costs an RL step: the collapse monitor's ``observe``, the RunLogger's ``log`` (metrics.jsonl
only, and with offline wandb; with a sample table every step and every 50 steps), and rendering
``stabledrl report`` for a long run.

Each step logs ``--keys`` metrics shaped like the learner's (ratio / clip / grad / timing / rollout) and,
where tables are on, 8 samples of 500-character completions. Times are per step: the mean over
``--steps`` steps (wall clock, this process). ``report_s`` renders the PNG and HTML of a ``--report-steps``
step run from its metrics.jsonl.

    python bench/monitoring.py [--steps 200] [--keys 40] [--report-steps 2000] [--no-wandb]

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

from system.config import load_config
from system.monitoring.logger import RunLogger
from system.monitoring.monitor import CollapseMonitor
from system.monitoring.report import write_report


def step_metrics(rng: random.Random, step: int, keys: int) -> dict[str, float]:
    out = {"rollout/reward_mean": 0.5 + 0.05 * rng.gauss(0, 1), "loss/ratio_max": math.exp(rng.gauss(0, 1)),
           "loss/log_ratio_std": abs(rng.gauss(0.3, 0.05)), "grad/pre_clip_norm": math.exp(rng.gauss(0, 0.3)),
           "grad/spikes": 0.0, "loss/bypass_frac": rng.random() * 0.05, "loss/ess_fraction": 0.9}
    for i in range(keys - len(out)):
        out[f"loss/extra_{i}"] = rng.random()
    return out


def samples(rng: random.Random) -> list[dict]:
    return [{"prompt": "q" * 100, "completion": "".join(rng.choice("abc ") for _ in range(500)), "reward": 1.0}
            for _ in range(8)]


def time_logger(mode: str, table_every: int, steps: int, keys: int, root: Path) -> float:
    cfg = load_config(None, [f"logging.wandb_mode={mode}", f"logging.table_every={table_every}",
                             "logging.histogram_every=10"])
    rng = random.Random(0)
    rows = [(step_metrics(rng, s, keys), samples(rng), {"ratio": [rng.random() for _ in range(256)]})
            for s in range(1, steps + 1)]
    with RunLogger(cfg, root / f"{mode}-{table_every}") as logger:
        start = time.perf_counter()
        for step, (m, smp, hist) in enumerate(rows, start=1):
            logger.log(step, m, samples=smp, histograms=hist)
        elapsed = time.perf_counter() - start
    return elapsed / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--keys", type=int, default=40)
    ap.add_argument("--report-steps", type=int, default=2000)
    ap.add_argument("--no-wandb", action="store_true", help="skip the offline wandb timings")
    args = ap.parse_args()
    result: dict[str, object] = {"steps": args.steps, "keys": args.keys}
    rng = random.Random(0)
    series = [step_metrics(rng, s, args.keys) for s in range(1, 10_001)]
    monitor = CollapseMonitor(load_config(None, []).monitor)
    start = time.perf_counter()
    for step, m in enumerate(series, start=1):
        monitor.observe(step, m)
    result["observe_us"] = round(1e6 * (time.perf_counter() - start) / len(series), 2)
    print(f"monitor.observe: {result['observe_us']} us/step", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        modes = ["disabled"] + ([] if args.no_wandb else ["offline"])
        for mode in modes:
            for every in (50, 1):
                ms = round(1e3 * time_logger(mode, every, args.steps, args.keys, root), 3)
                result[f"log_ms_{mode}_table_every_{every}"] = ms
                print(f"RunLogger.log {mode}, table every {every}: {ms} ms/step", file=sys.stderr)
        run = root / "report"
        with RunLogger(load_config(None, []), run) as logger:
            for step in range(1, args.report_steps + 1):
                logger.log(step, step_metrics(rng, step, args.keys))
        start = time.perf_counter()
        write_report(run)
        result["report_steps"] = args.report_steps
        result["report_s"] = round(time.perf_counter() - start, 2)
        print(f"report of {args.report_steps} steps: {result['report_s']} s", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
