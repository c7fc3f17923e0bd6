"""The SFT-seed bench end to end on a tiny budget: real SFT runs and evaluations per seed and budget,
the spread of the scores, and the cache (a rerun trains nothing and reproduces the scores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.sft_seeds import main

TINY = ["data.num_train=64", "data.num_test=16", "sft.batch_size=8", "sft.warmup_steps=1"]


def test_sft_seeds_bench_measures_each_seed_and_budget_and_caches(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--seeds", "0", "1", "--steps", "1", "3", "--out", str(tmp_path), *(a for o in TINY for a in ("--set", o))]
    main(argv)
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["bench"] == "sft_seeds" and first["seeds"] == [0, 1] and first["test_examples"] == 16
    assert [row["steps"] for row in first["budgets"]] == [1, 3]
    for row in first["budgets"]:
        assert len(row["scores"]) == len(row["accuracy"]) == 2
        assert all(0.0 <= s <= 1.0 for s in row["scores"])
        assert row["spread"] == pytest.approx(max(row["scores"]) - min(row["scores"]), abs=1e-4)
    assert len(list(tmp_path.glob("sft-*"))) == 4  # one checkpoint per (budget, seed)
    main(argv)
    captured = capsys.readouterr()
    again = json.loads(captured.out.strip().splitlines()[-1])
    assert captured.err.count("(cached)") == 4
    assert [row["scores"] for row in again["budgets"]] == [row["scores"] for row in first["budgets"]]


def test_sft_seeds_bench_needs_two_seeds() -> None:
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])
