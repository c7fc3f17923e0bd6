"""Rollout dumps (system/rollout_io.py): groups come back as written, and a bad line fails naming the
file and its row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from system.errors import DataError
from system.rollout_io import dump_groups, load_groups
from system.types import Example, Rollout, RolloutGroup


def _group(i: int) -> RolloutGroup:
    rollouts = [Rollout(example_id=f"ex{i}", prompt_ids=torch.tensor([5, 6, 7]), completion_ids=torch.tensor([8, 9]),
                        unmask_step=torch.tensor([1, 0]), reward=0.5 * j, reward_components={"cell": 0.5 * j})
                for j in range(2)]
    return RolloutGroup(f"g{i}", Example("sudoku", f"ex{i}", "puzzle", {"solution": "1234"}), rollouts, policy_version=i)


def test_a_dump_reads_back_as_written(tmp_path: Path) -> None:
    path = tmp_path / "dump.jsonl"
    dump_groups(path, [_group(0)])
    dump_groups(path, [_group(1)])  # appends
    back = list(load_groups(path))
    assert [g.group_id for g in back] == ["g0", "g1"] and [g.policy_version for g in back] == [0, 1]
    assert back[1].example.reference == {"solution": "1234"}
    r = back[1].rollouts[1]
    assert r.reward == 0.5 and r.reward_components == {"cell": 0.5}
    assert torch.equal(r.completion_ids, torch.tensor([8, 9])) and r.logprobs is None


@pytest.mark.parametrize(("line", "why"), [("{not json", "not valid JSON"),
                                           (json.dumps({"group_id": "g"}), "not a rollout group \\(KeyError")])
def test_a_bad_line_names_the_file_and_row(tmp_path: Path, line: str, why: str) -> None:
    path = tmp_path / "dump.jsonl"
    dump_groups(path, [_group(0)])
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" + line + "\n")  # row 2 is blank: row numbers are line numbers
    with pytest.raises(DataError, match=f"dump.jsonl: row 3: {why}"):
        list(load_groups(path))


def test_a_missing_dump_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="rollout_only"):
        list(load_groups(tmp_path / "none.jsonl"))
