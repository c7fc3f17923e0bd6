"""How much signal is in one RL batch of the demo, and where the noise comes from.

From a checkpoint (the demo's SFT policy by default: ``--checkpoint``) and an RL config (the demo's:
``configs/demo_rl.yaml`` with the SFT stage's data and decoding), draws ``--batches`` rollout batches
(the rollout worker, the configured reward) and, for each, ``--draws`` independent estimator draws,
and takes the pipeline's loss gradient for each pair (bench/exact_gradient.py's `pipeline_gradient`:
estimator draws for new and old, the loss, backward; no optimizer). Reported:

- ``zero_variance_groups``, ``advantage_abs_mean``, ``reward_mean``: the signal the rewards carry;
- the gradient's decomposition (unbiased estimates): the noise of one batch-and-draw gradient,
  E|g - E g|^2, split into mask noise (between the draws of one batch) and rollout noise (the rest),
  against the signal |E g|^2; ``batch_snr`` = |E g| / sqrt(noise), ``two_batch_cosine`` (mean cosine
  of two independent batch gradients: what one update has in common with the next);
- ``weights_effect``: cosine and norm ratio between the update with the estimated, clipped,
  self-normalised weights (independent masks: noisy ratios at theta = theta_old) and the same draws
  with the ratio fixed at 1 (weights 1/G): how much of the update the ratio noise, clipping and
  self-normalisation change;
- ``reward_tokens_only`` (sudoku): the same decomposition when only the blank cells' answer tokens are
  scored (the only tokens the d1 reward pays for): how much of the noise the other tokens add.

    python bench/update_signal.py [--checkpoint DIR] [--batches 8] [--draws 4] [--set k=v ...]

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from actors.rewards import score
from actors.rewards.context import RewardContext
from actors.rollout_worker import RolloutWorker
from actors.tasks import load_task_data
from system.config import Config, load_config
from system.types import RolloutGroup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exact_gradient import cosine, pipeline_gradient  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ANSWER_OFFSET = 6  # "<reasoning>" "\n" "</reasoning>" "\n" "<answer>" "\n", then the 16 digits


def reward_groups(worker: RolloutWorker, examples: list, ctx: RewardContext) -> list[RolloutGroup]:
    groups = worker.generate(examples)
    for g in groups:
        for r in g.rollouts:
            r.reward = float(score(g.example, r.completion_text, ctx).score)
    return groups


def blank_tokens_only(groups: list[RolloutGroup]) -> list[RolloutGroup]:
    """The groups with ``completion_mask`` on the answer tokens of the puzzle's blank cells only."""
    out = []
    for g in groups:
        blanks = [i for i, c in enumerate(g.example.reference["puzzle"]) if c == "0"]
        rollouts = []
        for r in g.rollouts:
            mask = torch.zeros_like(r.completion_ids, dtype=torch.bool)
            mask[[ANSWER_OFFSET + i for i in blanks]] = True
            rollouts.append(dataclasses.replace(r, completion_mask=mask & r.completion_mask))
        out.append(dataclasses.replace(g, rollouts=rollouts))
    return out


def decompose(grads: list[list[Tensor]]) -> dict[str, float]:
    """``grads[b][d]`` (batch b, draw d; at least 2 of each) -> unbiased estimates of the signal
    |E g|^2 (the mean dot product of two different batches' draw-averaged gradients), the noise of one
    batch-and-draw gradient E|g - E g|^2 and its split into mask noise (between the draws of one batch)
    and rollout noise (the rest), ``batch_snr`` = sqrt(signal / noise) and the mean cosine of two
    batches' single-draw gradients (what one update has in common with the next)."""
    g = torch.stack([torch.stack(row) for row in grads])  # [B, D, P]
    nb, nd = g.shape[:2]
    per_batch = g.mean(1)
    gram = per_batch @ per_batch.T
    signal = float((gram.sum() - gram.diagonal().sum()) / (nb * (nb - 1)))
    noise = float(g.pow(2).sum(-1).mean()) - signal
    mask_noise = float((g - per_batch[:, None]).pow(2).sum(-1).mean()) * nd / (nd - 1)
    pairs = [cosine(g[i, 0], g[j, 0]) for i in range(nb) for j in range(i + 1, nb)]
    return {"signal": signal, "noise": noise, "mask_noise_share": round(mask_noise / noise, 4),
            "rollout_noise_share": round(1 - mask_noise / noise, 4),
            "batch_snr": round(max(signal, 0.0) ** 0.5 / max(noise, 1e-300) ** 0.5, 4),
            "two_batch_cosine": round(sum(pairs) / len(pairs), 4)}


def measure(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    worker = RolloutWorker(cfg)
    model = worker.model
    model.requires_grad_(True)
    train, _ = load_task_data(cfg.data)
    ctx = RewardContext(profile=cfg.reward.profile, config=cfg.reward)
    shared_cfg = cfg.model_copy(update={"algorithm": cfg.algorithm.model_copy(update={"coupling": "shared"})})
    gen = torch.Generator().manual_seed(args.seed)
    n = cfg.rollout.prompts_per_step
    stats: dict[str, list[float]] = {"zero": [], "adv": [], "reward": []}
    grads, shared, blanks, effect = [], [], [], []
    for b in range(args.batches):
        groups = reward_groups(worker, train[b * n:(b + 1) * n], ctx)
        rewards = torch.tensor([[r.reward for r in g.rollouts] for g in groups])
        stats["zero"].append(float((rewards.std(1) == 0).float().mean()))
        stats["adv"].append(float((rewards - rewards.mean(1, keepdim=True)).abs().mean()))
        stats["reward"].append(float(rewards.mean()))
        row, row_shared, row_blank = [], [], []
        for _ in range(args.draws):
            state = gen.get_state()
            row.append(pipeline_gradient(model, cfg, groups, gen))
            gen.set_state(state)  # the same draws with the ratio fixed at 1
            row_shared.append(pipeline_gradient(model, shared_cfg, groups, gen))
            if cfg.data.task == "sudoku":
                row_blank.append(pipeline_gradient(model, cfg, blank_tokens_only(groups), gen))
        effect += [(cosine(a, c), float(a.norm() / c.norm().clamp_min(1e-300))) for a, c in zip(row, row_shared)]
        grads.append(row)
        shared.append(row_shared)
        if row_blank:
            blanks.append(row_blank)
        print(f"batch {b + 1}/{args.batches}: reward {stats['reward'][-1]:.3f}", file=sys.stderr)
    mean = lambda xs: round(sum(xs) / max(1, len(xs)), 4)  # noqa: E731
    result = {"reward_mean": mean(stats["reward"]), "zero_variance_groups": mean(stats["zero"]),
              "advantage_abs_mean": mean(stats["adv"]), "all_tokens": decompose(grads),
              "ratio_fixed_at_1": decompose(shared),
              "weights_effect": {"cosine": mean([c for c, _ in effect]), "norm_ratio": mean([r for _, r in effect])}}
    if blanks:
        result["reward_tokens_only"] = decompose(blanks)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the policy (an SFT checkpoint directory)")
    parser.add_argument("--config", default=str(CONFIGS / "demo_rl.yaml"))
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="config override k=v")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.monotonic()
    cfg = load_config(args.config, [f"model.path={args.checkpoint}", "cluster.mode=local", *args.set])
    result = measure(cfg, args)
    print(json.dumps({"bench": "update_signal", "checkpoint": args.checkpoint, "estimator": cfg.algorithm.estimator,
                      "loss": cfg.algorithm.name, "prompts": cfg.rollout.prompts_per_step,
                      "group_size": cfg.rollout.group_size, "batches": args.batches, "draws": args.draws,
                      **result, "seconds": round(time.monotonic() - start, 1)}))


if __name__ == "__main__":
    main()
