"""A learner step on fixed rollouts, run by the learner tests in 1 or 2 processes (torchrun).

    python -m torch.distributed.run --nproc_per_node=N tests/learner/learner_job.py OUT_DIR [--set k=v ...]

Each rank trains on its contiguous share of the same 4 groups; rank 0 writes the updated weights and
the metrics to OUT_DIR."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from learner.learner import Learner
from system.config import load_config
from system.types import Example, Rollout, RolloutGroup

BASE = [
    "model.tiny.hidden_size=32", "model.tiny.num_hidden_layers=2", "model.tiny.intermediate_size=64",
    "rollout.group_size=4", "rollout.prompts_per_step=4", "learner.micro_batch_size=4", "learner.inner_updates=2",
    "learner.lr=1e-3", "decoding.gen_length=16", "decoding.block_length=8", "decoding.steps=8",
    "algorithm.name=stabledrl", "algorithm.estimator=elbo", "algorithm.coupling=independent",
]


def fixed_groups(num_groups: int = 4, group_size: int = 4, length: int = 16) -> list[RolloutGroup]:
    gen = torch.Generator().manual_seed(1234)
    groups = []
    for g in range(num_groups):
        prompt = torch.randint(10, 100, (5 + g,), generator=gen)
        rollouts = []
        for i in range(group_size):
            completion = torch.randint(10, 100, (length,), generator=gen)
            rollouts.append(Rollout(example_id=f"ex{g}", prompt_ids=prompt, completion_ids=completion,
                                    unmask_step=torch.randperm(length, generator=gen) // 2,
                                    reward=float((g + i) % 3) / 2))
        groups.append(RolloutGroup(f"g{g}", Example("toy", f"ex{g}", "p"), rollouts))
    return groups


def main() -> None:
    out = Path(sys.argv[1])
    overrides = BASE + [a for a in sys.argv[2:] if a != "--set"]
    learner = Learner(load_config(None, overrides))
    groups = fixed_groups()
    share = len(groups) // learner.world_size
    mine = groups[learner.rank * share:(learner.rank + 1) * share]
    metrics = learner.train_on(mine)
    state = learner.state_dict()
    if learner.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "weights.safetensors"))
        (out / "metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main()
