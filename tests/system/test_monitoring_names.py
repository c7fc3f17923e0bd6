"""Metric names (the one mapping to the logged namespaces), the rollout metrics of scored groups, and the
metrics.jsonl record encoding."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from learner.losses import PolicyLossInput, get_loss
from system.errors import DataError
from system.monitoring.dashboard import PANELS
from system.monitoring.names import RENAMES, canonical_metrics, rollout_metrics, rollout_values
from system.monitoring.records import append_record, decode, encode, latest_by_step, read_records
from system.types import Example, Rollout, RolloutGroup

NAMESPACES = ("rollout/", "ratio/", "clip/", "loss/", "grad/", "kl/", "timing/", "system/", "monitor/")


def test_every_rename_lands_in_a_namespace_and_mapping_is_idempotent() -> None:
    raw = {k: float(i) for i, k in enumerate(RENAMES)}
    out = canonical_metrics(raw)
    assert set(out) == set(RENAMES.values())
    assert all(k.startswith(NAMESPACES) for k in out)
    assert canonical_metrics(out) == out
    assert out["ratio/max"] == float(list(RENAMES).index("loss/ratio_max"))


def test_unknown_keys_pass_and_non_numbers_drop() -> None:
    out = canonical_metrics({"step": 3, "custom/x": 2, "flag": True, "name": "a", "rollout/accuracy": 0.5})
    assert out == {"custom/x": 2.0, "rollout/accuracy": 0.5}
    assert isinstance(out["custom/x"], float)


def test_tokens_per_second() -> None:
    out = canonical_metrics({"rollout/tokens": 1200.0, "timing/generation": 2.0})
    assert out["rollout/tokens_per_s"] == 600.0  # 1200 tokens / 2 s
    assert "rollout/tokens_per_s" not in canonical_metrics({"rollout/tokens": 5.0, "timing/generation": 0.0})


def test_real_loss_diagnostics_map_into_ratio_clip_and_kl() -> None:
    new = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]], requires_grad=True)
    old, ref = torch.tensor([[-1.2, -1.8], [-0.4, -1.5]]), torch.tensor([[-1.0, -2.1], [-0.6, -1.4]])
    out = get_loss("diffu_grpo")(PolicyLossInput(new, old, torch.tensor([1.0, -1.0]), torch.tensor([0, 0]),
                                                 token_mask=torch.ones(2, 2, dtype=torch.bool), ref_logp=ref))
    names = canonical_metrics({f"loss/{k}": v for k, v in out.diagnostics.items()})
    assert {k.split("/")[0] for k in names} == {"ratio", "clip", "kl", "loss"}
    assert set(names) - {k for k in names if k.startswith(("ratio/", "clip/", "kl/"))} == {"loss/num_groups"}
    panel_keys = {k for p in PANELS for k in p.keys if k.startswith(("ratio/", "clip/"))}
    assert panel_keys <= set(names)  # every ratio / clip panel line is something the losses report


def _rollout(reward: float, length: int, scored: int | None = None) -> Rollout:
    mask = None if scored is None else torch.arange(length) < scored
    return Rollout(example_id="e", prompt_ids=torch.ones(3, dtype=torch.long),
                   completion_ids=torch.ones(length, dtype=torch.long), unmask_step=torch.zeros(length),
                   completion_mask=mask, reward=reward)


def test_rollout_metrics_per_task() -> None:
    math_ex, sudoku = Example("math", "1", "p"), Example("sudoku", "2", "p")
    groups = [RolloutGroup("g1", math_ex, [_rollout(1.0, 4), _rollout(0.0, 4, scored=2)]),
              RolloutGroup("g2", sudoku, [_rollout(0.5, 6), _rollout(0.5, 6)]),
              RolloutGroup("g3", math_ex, [_rollout(1.0, 2)])]
    out = rollout_metrics(groups)
    # math rewards 1, 0, 1: mean 2/3, population sd sqrt(((1/3)^2 * 2 + (2/3)^2) / 3) = sqrt(2/9)
    assert out["rollout/reward_mean/math"] == pytest.approx(2 / 3, abs=1e-12)
    assert out["rollout/reward_std/math"] == pytest.approx(math.sqrt(2 / 9), abs=1e-12)
    assert out["rollout/reward_mean/sudoku"] == 0.5 and out["rollout/reward_std/sudoku"] == 0.0
    assert out["rollout/tokens"] == 4 + 2 + 6 + 6 + 2  # the masked rollout counts its 2 scored tokens
    assert out["rollout/completions"] == 5
    assert rollout_values(groups)["rollout/completion_tokens"] == [4.0, 2.0, 6.0, 6.0, 2.0]
    assert rollout_metrics([]) == {}


def test_encode_decode_nonfinite_round_trip() -> None:
    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": "text"}
    text = json.dumps(encode(value), allow_nan=False)  # strict JSON
    assert text == '{"a": "NaN", "b": ["Infinity", "-Infinity", 1.5], "c": "text"}'
    back = decode(json.loads(text))
    assert math.isnan(back["a"]) and back["b"] == [math.inf, -math.inf, 1.5] and back["c"] == "text"


def test_read_records_errors_and_cut_short_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_record(path, {"type": "metrics", "step": 1, "x": 1.0})
    path.write_text(path.read_text() + '{"step": 2, "x": 2.0}\n{"type": "metrics", "st')
    records = read_records(path)
    assert [(r["type"], r["step"]) for r in records] == [("metrics", 1), ("metrics", 2)]  # typeless: metrics
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl: line 2 is not JSON"):
        read_records(path)
    path.write_text('{"type": "event", "step": "3"}\n')
    with pytest.raises(DataError, match=r"line 1 \(event record\) has no integer 'step' \(got '3'\)"):
        read_records(path)
    with pytest.raises(DataError, match=r"missing.jsonl: not found"):
        read_records(tmp_path / "missing.jsonl")


def test_latest_by_step_keeps_the_replayed_steps() -> None:
    records = [{"type": "metrics", "step": s, "x": float(i)} for i, s in enumerate([1, 2, 3, 2, 3, 4])]
    records.insert(2, {"type": "event", "step": 3})
    assert [(r["step"], r["x"]) for r in latest_by_step(records)] == [(1, 0.0), (2, 3.0), (3, 4.0), (4, 5.0)]
