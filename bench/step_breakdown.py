"""Where an RL step's time goes: generation, reward, learner and weight sync seconds per step, in sync
and async mode, on the tiny model (configs/smoke.yaml, local mode unless --ray).

    python bench/step_breakdown.py [--steps 6] [--ray]

Each mode runs ``--steps`` steps; the first step (DeepSpeed and worker start-up) is left out of the
means. Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from system.config import load_config  # noqa: E402
from system.driver import train  # noqa: E402
from system.monitoring.records import read_records  # noqa: E402

KEYS = {"generation": "timing/generation", "reward": "timing/reward", "learner": "timing/learner",
        "sync": "timing/sync", "step": "timing/step"}


def measure(mode: str, steps: int, ray: bool, out: Path) -> dict[str, float]:
    overrides = [f"output_dir={out / mode}", f"rollout.steps={steps}", f"rollout.mode={mode}",
                 f"rollout.max_staleness={1 if mode == 'async' else 0}", "logging.progress=false"]
    config = REPO / "configs" / ("smoke_ray.yaml" if ray else "smoke.yaml")
    train(load_config(config, overrides))
    records = [r for r in read_records(out / mode / "metrics.jsonl") if r["type"] == "metrics"][1:]
    result = {name: round(statistics.mean(r.get(key, 0.0) for r in records), 4) for name, key in KEYS.items()}
    print(f"{mode}: {result}", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--ray", action="store_true", help="run the workers as Ray actors (local cluster)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: measure(mode, args.steps, args.ray, Path(tmp)) for mode in ("sync", "async")}
    print(json.dumps({"bench": "step_breakdown", "cluster": "ray" if args.ray else "local",
                      "steps_measured": args.steps - 1, "seconds_per_step": results}))


if __name__ == "__main__":
    main()
