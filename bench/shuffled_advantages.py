"""Is the policy's drift under RL the noise of the update? The same run twice, with real and with
shuffled advantages.

Both runs start from one checkpoint with one config (local mode) and see the same kind of batches;
in the second, every group's advantages are permuted at random before the loss sees them, so each
update has the magnitude and structure of a real one (the same rewards, estimator draws, weights and
optimizer) but no information about which completion was better: pure update noise. If the rollout
reward falls about as fast under shuffled advantages as it fails to rise under real ones, the updates'
noise, not a wrong direction, is what moves the policy.

    python bench/shuffled_advantages.py --checkpoint DIR [--steps 40] [--set k=v ...]

Progress goes to stderr; the last stdout line is one JSON object: per run the rollout reward over the
first and last ``--window`` steps and its change.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def shuffled(real: Any, seed: int) -> Any:
    """``advantages_from_config`` with each group's advantages permuted (seeded)."""
    gen = torch.Generator().manual_seed(seed)

    def advantages(rewards, group_ids, cfg):  # type: ignore[no-untyped-def]
        out = real(rewards, group_ids, cfg)
        adv = out.advantages.clone()
        for g in group_ids.unique():
            rows = (group_ids == g).nonzero().squeeze(-1)
            adv[rows] = adv[rows[torch.randperm(rows.numel(), generator=gen)]]
        out.advantages = adv
        return out

    return advantages


def rewards_of(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["rollout/reward_mean"] for r in records
            if r.get("type") == "metrics" and r.get("rollout/reward_mean") is not None]


def run(cfg: Any, shuffle: bool, seed: int) -> list[float]:
    import learner.batch as batch
    from system.driver import train

    real = batch.advantages_from_config
    if shuffle:
        batch.advantages_from_config = shuffled(real, seed)
    try:
        train(cfg)
    finally:
        batch.advantages_from_config = real
    return rewards_of(Path(cfg.output_dir))


def main() -> None:
    from system.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--config", default=str(CONFIGS / "demo_rl.yaml"))
    parser.add_argument("--out", default="runs/shuffled_advantages")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], help="config override k=v")
    args = parser.parse_args()
    start = time.monotonic()
    result: dict[str, Any] = {"bench": "shuffled_advantages", "checkpoint": args.checkpoint, "steps": args.steps}
    for name in ("real", "shuffled"):
        cfg = load_config(args.config, [f"model.path={args.checkpoint}", "cluster.mode=local", "logging.wandb_mode=disabled",
                                        f"rollout.steps={args.steps}", "rollout.eval_every=0",
                                        f"output_dir={Path(args.out) / name}", *args.set])
        rewards = run(cfg, name == "shuffled", cfg.seed)
        first, last = rewards[:args.window], rewards[-args.window:]
        result[name] = {"first": round(sum(first) / len(first), 4), "last": round(sum(last) / len(last), 4),
                        "change": round(sum(last) / len(last) - sum(first) / len(first), 4)}
        print(f"{name}: {result[name]}", file=sys.stderr)
    result["seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
