"""The RL driver end to end in local mode (one process): 3 steps of the tiny model on the synthetic copy
task change the parameters, advance the policy version, publish to the rollout workers, and write
finite metrics; async mode never trains on a group older than max_staleness."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from system.config import load_config
from system.driver import train
from system.models import load_model
from system.models.build import new_tiny_model
from tests.conftest import poison_loss_input, run_records

SMALL = [
    "data.task=copy", "data.num_train=64", "data.num_test=8", "model.tiny.hidden_size=32",
    "model.tiny.num_hidden_layers=2", "model.tiny.intermediate_size=64", "decoding.gen_length=8",
    "decoding.block_length=8", "decoding.steps=4", "decoding.temperature=1.0", "rollout.group_size=4",
    "rollout.prompts_per_step=2", "rollout.steps=3", "learner.micro_batch_size=8", "learner.lr=1e-3",
    "logging.progress=false",
]


def fail_the_second_call(monkeypatch: pytest.MonkeyPatch, cls: type, method: str, error: Exception) -> None:
    """Make the second call of ``cls.method`` (in this process: local mode) raise ``error``."""
    real, calls = getattr(cls, method), {"n": 0}

    def failing(self, *args):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise error
        return real(self, *args)

    monkeypatch.setattr(cls, method, failing)


def run(tmp_path: Path, *extra: str) -> tuple[dict, list[dict]]:
    cfg = load_config(None, [*SMALL, f"output_dir={tmp_path}", *extra])
    summary = train(cfg)
    return summary, run_records(tmp_path)


@pytest.mark.parametrize("algorithm", ["stabledrl", "grpo"])
def test_local_run_updates_publishes_and_logs(tmp_path: Path, algorithm: str) -> None:
    summary, metrics = run(tmp_path, f"algorithm.name={algorithm}")
    assert summary["version"] == 3 and len(metrics) == 3
    assert [m["system/policy_version"] for m in metrics] == [1.0, 2.0, 3.0]
    for m in metrics:
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float)), m
        assert m["ratio/mean"] > 0 and "clip/bypass" in m and "timing/sync" in m
        assert m["system/staleness_max"] == 0.0
        assert m["rollout/groups"] == 2.0
    cfg = load_config(None, [*SMALL])
    initial, _ = new_tiny_model(cfg.model, cfg.seed)
    final = load_model(summary["checkpoint"])
    changed = [k for k, v in final.net.state_dict().items() if not torch.equal(v, initial.net.state_dict()[k])]
    assert changed, "no parameter changed in 3 RL steps"
    assert (tmp_path / "config.yaml").is_file()


def test_async_mode_respects_max_staleness(tmp_path: Path) -> None:
    _, metrics = run(tmp_path, "rollout.mode=async", "rollout.max_staleness=1", "rollout.steps=3")
    lags = [m["system/staleness_max"] for m in metrics]
    assert max(lags) <= 1.0
    assert lags[0] == 0.0 and 1.0 in lags  # step 1 is on-policy; later steps train one version behind


def test_resume_continues_exactly(tmp_path: Path) -> None:
    """3 uninterrupted steps vs 2 steps, a checkpoint, and a resumed 3rd step: same step-3 metrics."""
    _, straight = run(tmp_path / "straight")
    run(tmp_path / "first", "rollout.steps=2", "rollout.checkpoint_every=1")
    cfg = load_config(None, [*SMALL, f"output_dir={tmp_path / 'resumed'}"])
    summary = train(cfg, resume=tmp_path / "first" / "checkpoints" / "step-1")
    resumed = run_records(tmp_path / "resumed")
    assert summary["steps"] == 3 and [m["step"] for m in resumed] == [2, 3]
    for want, got in zip(straight[1:], resumed):
        for key, value in want.items():
            if key.startswith("timing/") or key in ("time", "type", "rollout/tokens_per_s"):
                continue
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_resume_from_a_missing_checkpoint_fails_clearly(tmp_path: Path) -> None:
    from system.errors import CheckpointError

    cfg = load_config(None, [*SMALL, f"output_dir={tmp_path}"])
    with pytest.raises(CheckpointError, match="nowhere does not exist; pass a RUN_DIR/checkpoints/step-N"):
        train(cfg, resume=tmp_path / "nowhere")


def test_rollout_only_then_train_only_replays_the_dump(tmp_path: Path) -> None:
    summary, metrics = run(tmp_path / "gen", "rollout.debug_mode=rollout_only", "rollout.steps=2")
    dump = Path(summary["dump"])
    lines = dump.read_text().splitlines()
    assert len(lines) == 4 and "rollout/reward_mean" in metrics[0]  # 2 steps x 2 groups
    first = json.loads(lines[0])
    assert len(first["rollouts"]) == 4 and "unmask_step" in first["rollouts"][0]
    summary, metrics = run(tmp_path / "train", "rollout.debug_mode=train_only", f"rollout.dump_path={dump}")
    assert summary["steps"] == 2 and len(metrics) == 2  # the dump holds 2 steps' worth
    assert all(m["loss/updates"] >= 1 for m in metrics)
    assert (tmp_path / "train" / "final" / "config.json").is_file()


def events(run_dir: Path) -> list[dict]:
    return run_records(run_dir, "event")


def test_rollback_restores_the_checkpoint_and_continues(tmp_path: Path) -> None:
    # Any ratio above 1.000001 "blows up": each step fires and rolls back to the last good checkpoint
    # until max_rollbacks is spent, then the run stops with the reason.
    from system.driver import RunStopped

    with pytest.raises(RunStopped, match="ratio"):
        run(tmp_path, "rollout.checkpoint_every=1", "monitor.ratio_max=1.000001", "monitor.ratio_action=rollback",
            "monitor.max_rollbacks=2", "rollout.steps=3")
    fired = events(tmp_path)
    assert [e["action"] for e in fired] == ["rollback", "rollback", "stop"]
    assert all(e["rollback_to"] == 0 for e in fired[:2])  # step 0: the initial policy, never replaced
    assert not run_records(tmp_path)  # no step was ever accepted, so nothing was published or logged


def test_an_injected_nan_loss_never_publishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From step 2 on, the learner's likelihood estimates are NaN (injected): the monitor fires, the
    driver rolls back instead of publishing, and stops once max_rollbacks is spent."""
    from system.driver import RunStopped

    poison_loss_input(monkeypatch, lambda n: n > 1)  # step 1 = 1 inner update x 1 micro-batch
    with pytest.raises(RunStopped, match="non-finite"):
        run(tmp_path, "rollout.checkpoint_every=1", "monitor.max_rollbacks=1", "rollout.steps=3")
    fired = events(tmp_path)
    assert [(e["detector"], e["action"]) for e in fired] == [("nonfinite", "rollback"), ("nonfinite", "stop")]
    published = run_records(tmp_path)
    assert [m["system/policy_version"] for m in published] == [1.0]  # only the clean step 1 was published
    for m in published:
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float))


def test_an_alerted_nan_loss_logs_the_step_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """monitor.nonfinite_action=alert (the stability bench): step 2's loss is NaN; the run logs step 2's
    rollout metrics with the event and finishes all 3 steps."""
    poison_loss_input(monkeypatch, lambda n: n == 2)  # step 2 (1 inner update x 1 micro-batch a step)
    summary, metrics = run(tmp_path, "monitor.nonfinite_action=alert")
    assert summary["steps"] == 3 and [m["step"] for m in metrics] == [1, 2, 3]
    assert [(e["step"], e["detector"], e["action"]) for e in events(tmp_path)] == [(2, "nonfinite", "alert")]
    assert "rollout/reward_mean" in metrics[1] and "ratio/mean" not in metrics[1]
    assert "ratio/mean" in metrics[2] and math.isfinite(metrics[2]["ratio/mean"])


def test_a_learner_failure_stops_with_the_error_and_the_checkpoint_to_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from learner.learner import Learner
    from system.driver import LearnerFailed

    fail_the_second_call(monkeypatch, Learner, "_train_on", RuntimeError("disk full (injected)"))
    with pytest.raises(LearnerFailed, match=r"failed at step 2: .*disk full \(injected\).*--resume .*step-1"):
        run(tmp_path, "rollout.checkpoint_every=1")


def test_resuming_a_checkpoint_of_another_model_fails_clearly(tmp_path: Path) -> None:
    from system.errors import CheckpointError

    run(tmp_path / "small", "rollout.steps=2", "rollout.checkpoint_every=1")
    cfg = load_config(None, [*SMALL, f"output_dir={tmp_path / 'wide'}", "model.tiny.hidden_size=64"])
    with pytest.raises(CheckpointError, match="does not fit this model"):
        train(cfg, resume=tmp_path / "small" / "checkpoints" / "step-1")


def test_histograms_of_ratios_and_advantages_are_logged(tmp_path: Path) -> None:
    run(tmp_path, "logging.histogram_every=1")
    hists = run_records(tmp_path, "histogram")
    names = {h["name"] for h in hists}
    assert {"ratio", "log_ratio", "advantage"} <= names
    assert all(sum(h["counts"]) == 8 for h in hists if h["name"] == "advantage")  # 2 groups x 4


def test_kl_drift_on_the_probe_set_grows_from_zero(tmp_path: Path) -> None:
    _, metrics = run(tmp_path, "logging.kl_probe_every=1", "logging.kl_probe_size=4", "learner.lr=1.0e-2")
    drift = [m["kl/drift"] for m in metrics]
    assert all(d >= 0 for d in drift) and drift[-1] > 0


def test_periodic_evaluation_scores_the_published_weights(tmp_path: Path) -> None:
    """rollout.eval_every: step 0 (the starting policy), every n steps and the last step carry eval/*;
    the last one equals `stabledrl eval` of the final checkpoint (the rollout workers held those weights)."""
    from actors.evaluate import evaluate

    _, metrics = run(tmp_path, "rollout.eval_every=2", "rollout.eval_limit=4", "data.num_test=8")
    scored = {m["step"]: m for m in metrics if "eval/score" in m}
    assert sorted(scored) == [0, 2, 3]
    assert "rollout/reward_mean" not in scored[0] and [m["step"] for m in metrics if "rollout/reward_mean" in m] == [
        1, 2, 3]
    for m in scored.values():
        assert 0.0 <= m["eval/score"] <= 1.0 and m["eval/completion_length"] >= 0 and m["timing/eval"] > 0
    cfg = load_config(None, [*SMALL])
    want = evaluate(cfg, tmp_path / "final", limit=4)
    assert scored[3]["eval/score"] == pytest.approx(want["score"], abs=1e-12)
    assert scored[3]["eval/completion_length"] == pytest.approx(want["completion_length"])


def test_eval_every_must_follow_the_published_weights() -> None:
    from system.errors import ConfigError

    with pytest.raises(ConfigError, match="eval_every .3. must be a multiple of publish_every .2."):
        load_config(None, ["rollout.eval_every=3", "rollout.publish_every=2"])


def test_learner_metrics_of_several_ranks() -> None:
    """Means stay means; the largest ratio and gradient norm are the largest of any rank; spikes add up."""
    from system.driver import average

    ranks = [{"loss/ratio_mean": 1.0, "loss/ratio_max": 3.0, "grad/pre_clip_norm": 0.5, "grad/spikes": 1.0},
             {"loss/ratio_mean": 2.0, "loss/ratio_max": 1e6, "grad/pre_clip_norm": 0.2, "grad/spikes": 2.0}]
    out = average(ranks)
    assert out == {"loss/ratio_mean": 1.5, "loss/ratio_max": 1e6, "grad/pre_clip_norm": 0.5, "grad/spikes": 3.0}
    assert average(ranks[:1]) == ranks[0]
