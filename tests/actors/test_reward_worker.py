"""RewardWorker: results in order and equal to in-process scoring; a hanging item times out and a
crashing one is reported, each followed by correctly scored items from a replaced worker; errors
are counted by kind. The test-only rewards below are registered in the worker processes (they are
importable by name, so the worker processes can unpickle them)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from actors.reward_worker import RewardWorker
from actors.rewards import RewardContext, score
from system.config import RewardConfig
from system.types import Example, Rollout, RolloutGroup


def hang_reward(example, completion, ctx):
    while True:
        time.sleep(0.05)


def crash_reward(example, completion, ctx):
    os._exit(7)


def raise_reward(example, completion, ctx):
    raise RuntimeError(f"broken reward for {completion!r}")


EXTRA = {("hang", "default"): hang_reward, ("crash", "default"): crash_reward, ("raise", "default"): raise_reward}
COUNTDOWN = Example("countdown", "c", "q", {"numbers": [3, 5, 7], "target": 22})
SUDOKU = Example("sudoku", "s", "q", {"puzzle": "0041000340120034", "solution": "3241142343122134", "size": 4})
GSM = Example("gsm8k", "g", "q", {"answer": "72"})
HANG, CRASH, RAISE = Example("hang", "h", "q"), Example("crash", "x", "q"), Example("raise", "r", "q")


def good(expression: str) -> str:
    return f"<reasoning>\nok\n</reasoning>\n<answer>\n{expression}\n</answer>\n"


@pytest.fixture(scope="module")
def worker():
    w = RewardWorker(RewardConfig(num_workers=2, timeout_s=3.0), extra_rewards=EXTRA)
    yield w
    w.close()


def test_results_in_order_and_equal_to_in_process_scoring(worker):
    items = [(COUNTDOWN, good("3*5+7")), (SUDOKU, good("3241142343122134")), (GSM, good("$72")),
             (COUNTDOWN, good("3+5+7")), (GSM, good("71")), (SUDOKU, good("3241")), (COUNTDOWN, "nothing")]
    results = worker.score(items)
    expected = [score(ex, text, RewardContext()) for ex, text in items]
    assert results == expected
    assert [r.correct for r in results] == [True, True, True, False, False, False, False]


def test_hang_times_out_and_the_next_items_are_scored(worker):
    before = worker.stats()
    results = worker.score([(HANG, ""), (COUNTDOWN, good("3*5+7")), (GSM, good("72")), (HANG, ""),
                            (COUNTDOWN, good("3+5+7"))])
    assert "timed out after 3.0 s" in results[0].reason and results[0].score == 0.0
    assert "timed out" in results[3].reason
    assert results[1].correct and results[2].correct and results[4].score == pytest.approx(0.1)
    stats = worker.stats()
    assert stats["timeouts"] - before["timeouts"] == 2 and stats["restarts"] - before["restarts"] == 2
    assert stats["errors"]["timeout"] - before["errors"].get("timeout", 0) == 2


def test_crash_and_exception_are_reported_with_their_item(worker):
    before = worker.stats()
    results = worker.score([(CRASH, "boom"), (COUNTDOWN, good("3*5+7")), (RAISE, "bad"), (SUDOKU, good("3241142343122134"))])
    assert "died while scoring this item (exit code 7)" in results[0].reason and results[0].score == 0.0
    assert results[2].reason == "reward error: RuntimeError: broken reward for 'bad'" and results[2].score == 0.0
    assert results[1].correct and results[3].correct
    stats = worker.stats()
    assert stats["errors"]["worker_crash"] - before["errors"].get("worker_crash", 0) == 1
    assert stats["errors"]["exception:RuntimeError"] - before["errors"].get("exception:RuntimeError", 0) == 1
    assert stats["restarts"] - before["restarts"] == 1  # an exception does not cost a process
    assert stats["items"] - before["items"] == 4


def test_unknown_task_is_an_error_result(worker):
    (result,) = worker.score([(Example("chess", "k", "q"), "e4")])
    assert result.score == 0.0 and "no reward for task 'chess'" in result.reason
    assert worker.stats()["errors"]["unknown_task"] >= 1


def test_math_verify_blowup_is_cut_by_the_timeout(worker):
    # math-verify expands 10^{10^{10}} symbolically and does not return for minutes.
    results = worker.score([(GSM, good("\\boxed{10^{10^{10}}}")), (GSM, good("72"))])
    assert not results[0].correct and results[1].correct


def test_score_group_writes_rollout_rewards(worker):
    def rollout(text):
        ids = torch.zeros(3, dtype=torch.long)
        return Rollout("c", ids, ids, ids, completion_text=text)

    group = RolloutGroup("g0", COUNTDOWN, [rollout(good("3*5+7")), rollout(good("3+5+7")), rollout("")])
    results = worker.score_group(group)
    assert [r.reward for r in group.rollouts] == pytest.approx([1.0, 0.1, 0.0])
    assert group.rollouts[0].reward_components == results[0].components and group.rollouts[1].reward_reason
    assert torch.allclose(group.rewards, torch.tensor([1.0, 0.1, 0.0]))
    with pytest.raises(ValueError, match="2 examples but 1 completions"):
        worker.score_batch([COUNTDOWN, COUNTDOWN], ["x"])


def test_single_worker_replaces_a_hung_process():
    with RewardWorker(RewardConfig(num_workers=1, timeout_s=2.0), extra_rewards=EXTRA) as w:
        results = w.score([(HANG, ""), (COUNTDOWN, good("3*5+7")), (CRASH, ""), (SUDOKU, good("3241142343122134"))])
        assert "timed out" in results[0].reason and results[1].correct
        assert "died" in results[2].reason and results[3].correct
        assert w.stats()["restarts"] == 2 and w.stats()["items"] == 4
    with pytest.raises(RuntimeError, match="closed"):
        w.score([(COUNTDOWN, "")])


@pytest.mark.slow
def test_spawn_start_method():
    with RewardWorker(RewardConfig(num_workers=1, timeout_s=2.0, start_method="spawn"), extra_rewards=EXTRA) as w:
        results = w.score([(HANG, ""), (COUNTDOWN, good("3*5+7"))])
        assert "timed out" in results[0].reason and results[1].correct


def test_a_process_killed_while_idle_is_replaced_before_it_gets_work():
    """kill -9 of an idle scoring process (issue 19): the next batch is scored in full by a replacement,
    not failed with BrokenPipeError, and nothing is scored 0 for it."""
    with RewardWorker(RewardConfig(num_workers=2, timeout_s=3.0), extra_rewards=EXTRA) as w:
        assert w.score([(COUNTDOWN, good("3*5+7"))])[0].correct
        victim = next(slot.process for slot in w._slots if slot.ready)  # it scored that item: up and idle now
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=10)  # reaped: its pipe is closed, as after any kill -9
        results = w.score([(COUNTDOWN, good("3*5+7")), (SUDOKU, good("3241142343122134")), (COUNTDOWN, "")])
        assert [r.correct for r in results] == [True, True, False]
        assert w.stats()["restarts"] == 1 and w.stats()["errors"] == {"worker_died_idle": 1}
        assert all(slot.process.is_alive() for slot in w._slots)
