"""How much the demo's starting policy depends on the SFT seed and budget.

For every SFT budget (``sft.steps``; the cosine schedule follows it) and seed, trains the demo's SFT
stage (configs/demo_sudoku_sft.yaml, the same task data and test split for every run) and scores the
checkpoint on the whole test split with the demo's greedy protocol. Checkpoints are cached under
``OUT/sft-<hash>`` (learner.sft.cached_sft), so a rerun only evaluates. Per budget:

- ``scores`` / ``accuracy``: the test score (cell accuracy) and exact-solve rate, per seed;
- ``spread``: max - min of the scores over seeds, and their population ``std``.

This is the spread an RL gain would have to beat if every demo seed also reseeded SFT
(``bench/demo_seeds.py --vary-sft``).

    python bench/sft_seeds.py [--seeds 0 1 2] [--steps 300 600 1200 2400] [--out runs/sft_seeds]
                              [--set k=v]

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def measure(seeds: list[int], budgets: list[int], out: Path, overrides: list[str]) -> dict[str, Any]:
    from actors.evaluate import evaluate
    from learner.sft import cached_sft
    from system.demo import sft_config

    start = time.monotonic()
    rows, test_examples = [], 0
    for steps in budgets:
        scores, accuracy, seconds = [], [], []
        for seed in seeds:
            cfg = sft_config("sudoku", [f"sft.steps={steps}", "sft.eval_examples=0", *overrides], seed)
            t0 = time.monotonic()
            stage = cached_sft(cfg, out)
            seconds.append(round(time.monotonic() - t0, 1))
            result = evaluate(cfg, stage["checkpoint"], None)
            test_examples = result["examples"]  # the same split for every run
            scores.append(round(result["score"], 4))
            accuracy.append(round(result["accuracy"], 4))
            print(f"sft steps {steps} seed {seed}: score {scores[-1]} accuracy {accuracy[-1]} "
                  f"({'cached' if stage['cached'] else f'{seconds[-1]} s'})", file=sys.stderr, flush=True)
        rows.append({"steps": steps, "scores": scores, "accuracy": accuracy,
                     "spread": round(max(scores) - min(scores), 4), "std": round(statistics.pstdev(scores), 4),
                     "sft_seconds": seconds})
    return {"bench": "sft_seeds", "seeds": seeds, "test_examples": test_examples, "budgets": rows,
            "seconds": round(time.monotonic() - start, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 600, 1200, 2400])
    parser.add_argument("--out", type=Path, default=Path("runs/sft_seeds"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                        help="an override of the SFT config (configs/demo_sudoku_sft.yaml)")
    args = parser.parse_args(argv)
    if len(args.seeds) < 2:
        parser.error("--seeds: a spread needs at least 2 seeds")
    if min(args.steps) < 1:
        parser.error("--steps: every budget must be at least 1 step")
    print(json.dumps(measure(args.seeds, args.steps, args.out, args.overrides)))


if __name__ == "__main__":
    main()
