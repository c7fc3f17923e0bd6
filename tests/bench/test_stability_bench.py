"""The stability bench's numbers from a run's metrics: smoothing, the collapse rule, falls from best,
spikes, ratio maxima, ESS and the per-method aggregate, on hand-written metric series."""

from __future__ import annotations

import math

import pytest

from bench.stability import aggregate, collapse_step, run_stats, smoothed


def test_smoothing_is_a_trailing_mean() -> None:
    # window 3: [1], [1, 3], [1, 3, 5], [3, 5, 7]
    assert smoothed([1.0, 3.0, 5.0, 7.0], window=3) == [1.0, 2.0, 3.0, 5.0]


def test_collapse_is_the_first_step_after_which_reward_stays_below_half_the_best() -> None:
    # best so far before step 4 is 0.6; 0.2, 0.25, 0.1 are all < 0.3 -> collapse at step 4.
    assert collapse_step([0.4, 0.6, 0.5, 0.2, 0.25, 0.1]) == 4
    # the dip at step 3 recovers (0.5 >= 0.3): only the final stretch counts -> step 5.
    assert collapse_step([0.4, 0.6, 0.2, 0.5, 0.1, 0.05]) == 5
    # never below half the best -> none; a run that only rises -> none.
    assert collapse_step([0.4, 0.6, 0.31, 0.35]) is None
    assert collapse_step([0.1, 0.2, 0.3]) is None


def _metrics(rewards: list[float]) -> list[dict[str, float]]:
    return [{"rollout/reward_mean": r, "ratio/max": 1.0 + i, "ratio/ess": 8.0 - 0.5 * i,
             "ratio/ess_fraction": (8.0 - 0.5 * i) / 8,
             "grad/spikes": float(i == 2), "grad/pre_clip_norm": 0.1} for i, r in enumerate(rewards)]


def test_run_stats_by_hand() -> None:
    stats = run_stats(_metrics([0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]))
    # window 5: s_5 = 0.5 is the best; s_10 = mean of five zeros = 0.
    assert stats["best_reward"] == pytest.approx(0.5) and stats["final_reward"] == pytest.approx(0.0)
    assert stats["fall_from_best"] == pytest.approx(0.5)
    # a lucky first batch is not the best: s_1 = 0.9 is a one-step window; the best full window is 0.5
    lucky = run_stats(_metrics([0.9, 0.4, 0.4, 0.4, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5]))
    assert lucky["best_reward"] == pytest.approx(0.5) and lucky["final_reward"] == pytest.approx(0.5)
    # s_8 = (0.5 + 0.5 + 0 + 0 + 0) / 5 = 0.2 < 0.25, and s_9, s_10 stay below; s_7 = 0.3 does not.
    assert stats["collapse_step"] == 8
    assert stats["grad_spikes"] == 1 and stats["max_ratio"] == 10.0
    # ESS 8, 7.5, ..., 3.5: mean (8 + 3.5) / 2 = 5.75
    assert stats["mean_ess"] == pytest.approx(5.75) and stats["mean_ess_fraction"] == pytest.approx(5.75 / 8)


def test_aggregate_over_seeds() -> None:
    runs = [{"seed": s, "seconds": 1.0, "test_score": None, **run_stats(_metrics(r))}
            for s, r in enumerate([[0.2, 0.4], [0.4, 0.6]])]
    agg = aggregate(runs)
    # finals: s_2 = 0.3 and 0.5 -> mean 0.4, population std 0.1
    assert agg["final_reward"] == pytest.approx(0.4) and agg["final_reward_std"] == pytest.approx(0.1)
    assert agg["collapsed_runs"] == 0 and agg["collapse_step_per_seed"] == [None, None]
    assert agg["test_score"] is None and agg["max_ratio"] == 2.0
    assert math.isclose(agg["mean_ess"], 7.75)  # ESS 8 and 7.5 in each run


def test_summarize_recomputes_the_statistics_of_finished_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--summarize trains nothing: it reads each run's metrics.jsonl (and its non-finite events) again and
    keeps what only training knew (seconds, test scores) from runs.json."""
    import json

    from bench.stability import main
    from system.monitoring.records import append_record

    rewards = {"grpo": [0.5] * 5 + [0.0] * 5, "stabledrl": [0.5] * 10}
    runs = {}
    for method, series in rewards.items():
        run = tmp_path / "runs" / f"{method}-seed0"
        run.mkdir(parents=True)
        for step, m in enumerate(_metrics(series), start=1):
            append_record(run / "metrics.jsonl", {"type": "metrics", "step": step, **m})
        if method == "grpo":
            append_record(run / "metrics.jsonl", {"type": "event", "step": 7, "detector": "nonfinite"})
        runs[method] = [{"seed": 0, "seconds": 12.0, "test_score": 0.25, "collapse_step": None}]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    result = main(["--summarize", "--out", str(tmp_path)])
    grpo, stable = result["methods"]["grpo"], result["methods"]["stabledrl"]
    assert grpo["collapsed_runs"] == 1 and grpo["collapse_step_per_seed"] == [8]
    assert grpo["nonfinite_steps"] == 1 and stable["nonfinite_steps"] == 0 and stable["collapsed_runs"] == 0
    assert grpo["test_score"] == 0.25 and grpo["seconds"] == 12.0
    assert (tmp_path / "stability.png").is_file() and (tmp_path / "result.json").is_file()
