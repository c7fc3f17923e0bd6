"""The demo's acceptance measurement: does RL beat SFT by more than the seed-to-seed spread?

Runs ``stabledrl demo --seed S`` for every seed, one process per seed (each starts its own local Ray
cluster), each in its own run directory. By default every run starts RL from the same SFT checkpoint
(``--sft-seed``, trained once into ``OUT/sft`` and reused): the seed drives the RL stage (prompt order,
rollout sampling, the learner's masks), so the spread is RL's run-to-run spread. ``--vary-sft`` also
reseeds the SFT stage with S (model init, data order, masks): the spread of the whole pipeline. The task
data and its test split never change. From each run's last JSON line:

- ``before`` / ``after``: the test-split score after SFT and after RL, per seed;
- ``gain`` = after - before per seed, and its mean;
- ``spread_after`` / ``spread_before``: max - min over seeds (and the population std);
- ``beats_spread``: mean gain > max(spread_after, spread_before), and every seed's gain > 0.

    python bench/demo_seeds.py [--seeds 0 1 2] [--sft-seed 0 | --vary-sft] [--out runs/demo_seeds]
                               [--set k=v] [--sft-set k=v]

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_seed(seed: int, sft_seed: int, out: Path, overrides: list[str], sft_overrides: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "system.cli", "demo", "--seed", str(seed), "--sft-seed", str(sft_seed),
           "--run-dir", str(out / f"seed-{seed}"), "--sft-cache", str(out / "sft")]
    cmd += [a for o in overrides for a in ("--set", o)] + [a for o in sft_overrides for a in ("--sft-set", o)]
    print(f"seed {seed}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the demo with seed {seed} failed (exit code {proc.returncode}); its output is above")
    print(proc.stdout, file=sys.stderr, flush=True)
    return json.loads(lines[-1])


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The acceptance numbers of the module docstring from the demos' JSON lines."""
    before = [float(r["score_before"]) for r in runs]
    after = [float(r["score_after"]) for r in runs]
    gains = [a - b for a, b in zip(after, before)]
    spread_after, spread_before = max(after) - min(after), max(before) - min(before)
    mean_gain = statistics.fmean(gains)
    return {
        "seeds": [r["seed"] for r in runs], "before": before, "after": after, "gain": gains,
        "mean_before": statistics.fmean(before), "mean_after": statistics.fmean(after), "mean_gain": mean_gain,
        "spread_before": spread_before, "spread_after": spread_after,
        "std_before": statistics.pstdev(before), "std_after": statistics.pstdev(after),
        "beats_spread": mean_gain > max(spread_after, spread_before) and min(gains) > 0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sft-seed", type=int, default=0, help="the SFT checkpoint every RL seed starts from")
    p.add_argument("--vary-sft", action="store_true", help="reseed the SFT stage too (SFT seed = RL seed)")
    p.add_argument("--out", default="runs/demo_seeds", help="one run directory per seed under it")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="RL config override")
    p.add_argument("--sft-set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="SFT config override")
    args = p.parse_args(argv)
    start = time.monotonic()
    runs = [run_seed(s, s if args.vary_sft else args.sft_seed, Path(args.out), args.set, args.sft_set)
            for s in args.seeds]
    result = {"bench": "demo_seeds", "vary_sft": args.vary_sft, "sft_seeds": [r["sft_seed"] for r in runs],
              **summarize(runs),
              "steps": runs[0]["steps"], "test_examples": runs[0]["test_examples"],
              "seconds_per_demo": [r["seconds"] for r in runs], "sft_cached": [r["sft_cached"] for r in runs],
              "seconds": round(time.monotonic() - start, 1)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps({**result, "runs": runs}, indent=1))
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
