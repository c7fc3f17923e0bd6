"""``rollout.mode: stream`` in local mode (system/stream.py, system/streaming.py): prompt tickets are
delivered once and the open ones re-issued first after a resume; busy time counts overlapping calls once;
admission judges a group by its oldest token and refuses mixed-version groups where the learner would
mix behaviour policies; a stream run trains within the staleness bound, accounts for every prompt, and
resumes exactly."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from system.buffer import RolloutBuffer
from system.config import load_config
from system.driver import PromptSampler, train
from system.stream import Stream, needs_behaviour_logprobs, stream_capacity
from system.streaming import Occupancy, PromptStream, staleness_metrics
from system.types import Example, Rollout, RolloutGroup
from tests.conftest import run_records
from tests.system.test_driver import SMALL

STREAM = [*SMALL, "rollout.mode=stream", "rollout.max_staleness=1"]


def examples(n: int) -> list[Example]:
    return [Example("copy", str(i), f"prompt {i}") for i in range(n)]


def group(gid: str, version: int, token_versions: list[int] | None = None) -> RolloutGroup:
    tv = None if token_versions is None else torch.tensor(token_versions)
    rollout = Rollout("0", torch.tensor([1]), torch.tensor([2, 3]), torch.tensor([0, 1]), policy_version=version,
                      token_version=tv)
    return RolloutGroup(gid, Example("copy", "0", "p"), [rollout], policy_version=version)


# ------------------------------------------------------------------------------------------------ tickets


def test_a_ticket_is_closed_once_and_open_tickets_are_reissued_first_in_order() -> None:
    stream = PromptStream(PromptSampler(examples(10), seed=0))
    tickets = [stream.issue(now=float(i)) for i in range(4)]
    assert [t.seq for t in tickets] == [0, 1, 2, 3]
    assert stream.close(1) is tickets[1] and stream.close(1) is None  # a second delivery is a duplicate
    saved = stream.state()
    assert [seq for seq, _ in saved["open"]] == [0, 2, 3] and saved["next_seq"] == 4

    resumed = PromptStream(PromptSampler(examples(10), seed=0))
    resumed.load_state(saved)
    again = [resumed.issue(now=0.0) for _ in range(4)]
    assert [t.seq for t in again] == [0, 2, 3, 4]  # the open ones, then new prompts
    assert [t.example for t in again[:3]] == [tickets[0].example, tickets[2].example, tickets[3].example]
    assert again[0].group_id() == tickets[0].group_id()  # the same group id whoever generates it


def test_busy_time_counts_overlapping_calls_once() -> None:
    lane = Occupancy(now=0.0)
    lane.start(1.0)  # running
    lane.start(2.0)  # queued behind it
    lane.end(3.0)
    lane.end(5.0)
    assert lane.idle_fraction(now=10.0) == pytest.approx(0.6)  # busy 1..5 of 0..10
    lane.reset(10.0)
    lane.start(12.0)
    assert lane.idle_fraction(now=14.0) == pytest.approx(0.5)  # still running: counted up to now
    assert lane.idle_fraction(now=14.0, whole_run=True) == pytest.approx(1 - 6 / 14)


def test_staleness_metrics_count_each_lag() -> None:
    assert staleness_metrics([0, 1, 1, 2], 2) == {"stream/lag_0": 1.0, "stream/lag_1": 2.0, "stream/lag_2": 1.0,
                                                  "stream/lag_mean": 1.0}


# ------------------------------------------------------------------------------------------- admission


def test_a_group_is_admitted_by_its_oldest_token_and_mixed_groups_can_be_refused() -> None:
    buffer = RolloutBuffer(max_staleness=1)
    buffer.add([group("a", 2, [2, 3]), group("b", 3)], learner_version=3)
    batch = buffer.take(2, learner_version=3)
    assert batch is not None and [g.group_id for g in batch] == ["a", "b"]
    assert buffer.stats.lag_histogram == [1, 1]  # "a" is one version behind through its oldest token
    buffer.add([group("c", 1, [1, 3])], learner_version=3)  # its oldest token is two versions behind
    assert len(buffer) == 0 and buffer.stats.dropped_stale == 1

    strict = RolloutBuffer(max_staleness=1, mixed_versions=False)
    strict.add([group("a", 2, [2, 3]), group("b", 2, [2, 2])], learner_version=3)
    assert [g.group_id for g in strict.groups] == ["b"] and strict.stats.dropped_mixed == 1


def test_only_cached_behaviour_logprobs_refuse_mixed_groups() -> None:
    workers = SimpleNamespace(rollout=SimpleNamespace(size=1))
    for overrides, refused in ((["algorithm.estimator=elbo"], False),
                               (["algorithm.name=agrpo", "algorithm.estimator=agrpo"], True),
                               (["algorithm.name=agrpo", "algorithm.estimator=agrpo",
                                 "algorithm.agrpo_old_logprobs=recompute"], False)):
        cfg = load_config(None, [*STREAM, *overrides])
        buffer = RolloutBuffer(1)
        Stream(cfg, workers, None, PromptSampler(examples(4), 0), buffer)  # type: ignore[arg-type]
        assert needs_behaviour_logprobs(cfg) is refused and buffer.mixed_versions is not refused


def test_capacity_defaults_to_one_batch_ahead_and_must_fit_a_batch() -> None:
    assert stream_capacity(load_config(None, STREAM)) == 4
    assert stream_capacity(load_config(None, [*STREAM, "rollout.max_staleness=0"])) == 2
    with pytest.raises(ValueError, match="stream_capacity"):
        load_config(None, [*STREAM, "rollout.stream_capacity=1"])


# ------------------------------------------------------------------------------------------- a stream run


def stream_run(tmp_path: Path, *extra: str) -> tuple[dict, list[dict]]:
    cfg = load_config(None, [*STREAM, f"output_dir={tmp_path}", *extra])
    return train(cfg), run_records(tmp_path)


def test_a_stream_run_trains_within_the_bound_and_accounts_for_every_prompt(tmp_path: Path) -> None:
    summary, records = stream_run(tmp_path)
    assert summary["version"] == 3 and [m["system/policy_version"] for m in records] == [1.0, 2.0, 3.0]
    assert [m["system/staleness_max"] for m in records] == [0.0, 1.0, 1.0]  # one batch ahead, one version old
    assert [m["stream/lag_1"] for m in records] == [0.0, 2.0, 2.0]
    for m in records:
        assert 0.0 <= m["stream/actor_idle_fraction"] <= 1.0 and 0.0 <= m["stream/learner_idle_fraction"] <= 1.0
        assert m["stream/group_latency_mean"] > 0
    saved = torch.load(tmp_path / "checkpoints" / "step-3" / "stream.pt", weights_only=False)
    delivered = sum(m["stream/groups_delivered"] for m in records)
    assert delivered + len(saved["prompts"]["open"]) == saved["prompts"]["next_seq"]  # none lost
    ids = saved["buffer"]["seen"]
    assert len(ids) == delivered and len({i.rsplit(":t", 1)[1] for i in ids}) == len(ids)  # none twice
    assert records[-1]["system/groups_admitted"] + len(saved["buffer"]["groups"]) == delivered


def test_a_resumed_stream_continues_exactly(tmp_path: Path) -> None:
    """3 uninterrupted steps vs 1 step, a checkpoint (with the stream's buffered groups), and 2 resumed
    steps: the same metrics."""
    _, straight = stream_run(tmp_path / "straight")
    stream_run(tmp_path / "first", "rollout.steps=1")
    cfg = load_config(None, [*STREAM, f"output_dir={tmp_path / 'resumed'}"])
    summary = train(cfg, resume=tmp_path / "first" / "checkpoints" / "step-1")
    resumed = run_records(tmp_path / "resumed")
    assert summary["steps"] == 3 and [m["step"] for m in resumed] == [2, 3]
    for want, got in zip(straight[1:], resumed, strict=True):
        for key, value in want.items():
            if key.startswith(("timing/", "stream/actor_idle", "stream/learner_idle", "stream/group_")) \
                    or key in ("time", "type", "rollout/tokens_per_s"):
                continue
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_no_prompt_is_issued_whose_group_would_be_too_stale() -> None:
    """prompts_per_step 2, max_staleness 1, the learner's version published: two batches may wait; while the
    learner trains (its version about to move on), only the next one may fill."""
    cfg = load_config(None, STREAM)
    stream = Stream(cfg, SimpleNamespace(rollout=SimpleNamespace(size=1)), None,  # type: ignore[arg-type]
                    PromptSampler(examples(4), 0), RolloutBuffer(1), published=3)
    stream.version = 3
    stream.buffer.groups.extend([group("a", 3), group("b", 3), group("c", 3)])
    assert stream.fresh_enough()  # the 4th group trains in the 2nd batch, at version 4: one behind
    stream.training = True
    assert not stream.fresh_enough()  # the batch in training moves the learner to 4; the 4th group trains at 5
    stream.buffer.groups.pop()
    assert not stream.fresh_enough()  # still the 2nd batch after the one in training
    stream.buffer.groups.pop()
    assert stream.fresh_enough()  # the next batch, at version 4


def test_a_rollback_restarts_the_stream_of_its_checkpoint(tmp_path: Path) -> None:
    """Every step fires (any ratio above 1.000001) and rolls back to the initial checkpoint (its stream
    empty: what was in flight or buffered is dropped) until the rollbacks are spent, then stops."""
    from system.driver import RunStopped

    with pytest.raises(RunStopped, match="ratio"):
        stream_run(tmp_path, "rollout.checkpoint_every=1", "monitor.ratio_max=1.000001",
                   "monitor.ratio_action=rollback", "monitor.max_rollbacks=2")
    fired = run_records(tmp_path, "event")
    assert [e["action"] for e in fired] == ["rollback", "rollback", "stop"]
    saved = torch.load(tmp_path / "checkpoints" / "step-0" / "stream.pt", weights_only=False)
    assert saved["prompts"] == {"next_seq": 0, "open": []} and saved["buffer"]["groups"] == []
