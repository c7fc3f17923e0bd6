"""The demo's acceptance measurement: how much does RL gain, for every SFT seed and every RL seed, and
is the gain far above RL's seed-to-seed spread?

Runs ``stabledrl demo --seed S --sft-seed M`` for every RL seed S and every SFT seed M (the grid), one
process per run (each starts its own local Ray cluster), each in its own run directory
``OUT/sft-M-seed-S``. Each SFT checkpoint is trained once into ``OUT/sft`` and reused by its RL seeds:
the RL seed drives the RL stage only (prompt order, rollout sampling, the learner's masks), so the spread
over RL seeds from one checkpoint is RL's run-to-run spread. ``--vary-sft`` instead pairs SFT seed = RL
seed (one run per seed). The task data and its test split never change. From each run's last JSON line:

- ``before`` / ``after`` / ``gain`` (= after - before) per run, and per SFT seed (``by_sft_seed``): the
  mean gain, the RL spread (max - min of the RL seeds' scores after RL) and ``gain_over_spread``;
- ``accepted``: every run gains at least ``--min-gain`` (0.10) and, for every SFT seed, the mean gain
  is more than ``--spread-factor`` (5) times the RL spread (issue 20's acceptance);
- ``beats_spread`` (the older, weaker test): the mean gain exceeds the spread of the scores before and
  after over all runs, and every gain is positive.

    python bench/demo_seeds.py [--seeds 0 1 2] [--sft-seeds 0 1 2 | --vary-sft] [--out runs/demo_seeds]
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
           "--run-dir", str(out / f"sft-{sft_seed}-seed-{seed}"), "--sft-cache", str(out / "sft")]
    cmd += [a for o in overrides for a in ("--set", o)] + [a for o in sft_overrides for a in ("--sft-set", o)]
    print(f"sft seed {sft_seed}, seed {seed}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
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


def by_sft_seed(runs: list[dict[str, Any]], spread_factor: float) -> dict[str, dict[str, Any]]:
    """Per SFT seed: its RL seeds' gains, mean gain, RL spread and their ratio."""
    out = {}
    for sft_seed in sorted({r["sft_seed"] for r in runs}):
        mine = summarize([r for r in runs if r["sft_seed"] == sft_seed])
        spread = mine["spread_after"]
        out[str(sft_seed)] = {"before": mine["before"][0], "after": mine["after"], "gain": mine["gain"],
                              "mean_gain": mine["mean_gain"], "rl_spread": spread,
                              "gain_over_spread": mine["mean_gain"] / spread if spread > 0 else None,
                              "gain_beats_spread": mine["mean_gain"] > spread_factor * spread}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="RL seeds")
    p.add_argument("--sft-seeds", type=int, nargs="+", default=[0], help="SFT checkpoints every RL seed starts from")
    p.add_argument("--sft-seed", type=int, default=None, help="one SFT seed (the same as --sft-seeds M)")
    p.add_argument("--vary-sft", action="store_true", help="pair SFT seed = RL seed (one run per seed)")
    p.add_argument("--min-gain", type=float, default=0.10, help="the gain every run must reach")
    p.add_argument("--spread-factor", type=float, default=5.0, help="mean gain over RL spread, per SFT seed")
    p.add_argument("--out", default="runs/demo_seeds", help="one run directory per run under it")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="RL config override")
    p.add_argument("--sft-set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="SFT config override")
    args = p.parse_args(argv)
    start = time.monotonic()
    sft_seeds = [args.sft_seed] if args.sft_seed is not None else args.sft_seeds
    pairs = [(s, s) for s in args.seeds] if args.vary_sft else [(s, m) for m in sft_seeds for s in args.seeds]
    runs = [run_seed(s, m, Path(args.out), args.set, args.sft_set) for s, m in pairs]
    per_sft = by_sft_seed(runs, args.spread_factor)
    overall = summarize(runs)
    accepted = min(overall["gain"]) >= args.min_gain and all(v["gain_beats_spread"] for v in per_sft.values())
    result = {"bench": "demo_seeds", "vary_sft": args.vary_sft, "sft_seeds": [r["sft_seed"] for r in runs],
              **overall, "by_sft_seed": per_sft, "accepted": accepted, "min_gain": args.min_gain,
              "spread_factor": args.spread_factor,
              "steps": runs[0]["steps"], "test_examples": runs[0]["test_examples"],
              "seconds_per_demo": [r["seconds"] for r in runs], "sft_cached": [r["sft_cached"] for r in runs],
              "seconds": round(time.monotonic() - start, 1)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps({**result, "runs": runs}, indent=1))
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
