"""Rollout dumps: scored groups written to JSONL (one group a line) and read back, for the
``rollout_only`` / ``train_only`` debug modes (generate once, replay into the learner many times)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from system.data import jsonl_records
from system.errors import DataError
from system.types import Example, Rollout, RolloutGroup

_TENSORS = {"prompt_ids": torch.long, "completion_ids": torch.long, "unmask_step": torch.long,
            "logprobs": torch.float32, "entropies": torch.float32, "completion_mask": torch.bool,
            "token_version": torch.long}


def _rollout_row(r: Rollout) -> dict[str, Any]:
    row = {k: (None if getattr(r, k) is None else getattr(r, k).tolist()) for k in _TENSORS}
    row.update(example_id=r.example_id, completion_text=r.completion_text, policy_version=r.policy_version,
               reward=r.reward, reward_components=r.reward_components, reward_reason=r.reward_reason,
               decode_stats=r.decode_stats, decoder=r.decoder)
    return row


def group_row(g: RolloutGroup) -> dict[str, Any]:
    ex = g.example
    return {"group_id": g.group_id, "policy_version": g.policy_version,
            "example": {"task": ex.task, "id": ex.id, "prompt": ex.prompt, "reference": ex.reference},
            "rollouts": [_rollout_row(r) for r in g.rollouts]}


def dump_groups(path: str | Path, groups: list[RolloutGroup]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for g in groups:
            f.write(json.dumps(group_row(g)) + "\n")


def _rollout(row: dict[str, Any]) -> Rollout:
    tensors = {k: (None if row.get(k) is None else torch.tensor(row[k], dtype=dt)) for k, dt in _TENSORS.items()}
    return Rollout(example_id=str(row["example_id"]), completion_text=row.get("completion_text", ""),
                   policy_version=int(row.get("policy_version", 0)), reward=float(row["reward"]),
                   reward_components=dict(row.get("reward_components", {})),
                   reward_reason=row.get("reward_reason", ""), decode_stats=dict(row.get("decode_stats", {})),
                   decoder=str(row.get("decoder", "")), **tensors)


def load_groups(path: str | Path) -> Iterator[RolloutGroup]:
    """Groups of a dump, in order; a malformed line fails naming the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"rollout dump {path} not found: run with rollout.debug_mode=rollout_only first")
    for lineno, row in jsonl_records(path):
        try:
            ex = row["example"]
            yield RolloutGroup(row["group_id"], Example(ex["task"], ex["id"], ex["prompt"], ex.get("reference", {})),
                               [_rollout(r) for r in row["rollouts"]], int(row.get("policy_version", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: row {lineno}: not a rollout group ({type(e).__name__}: {e})") from e
