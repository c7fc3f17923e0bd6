"""SFT on registered tasks: targets built from the recorded solutions are correct answers under the
task's reward, the prompts are the rollout worker's prompt ids, and a short sudoku SFT run trains and
evaluates end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from actors import rewards
from actors.rewards import RewardContext
from actors.rollout_worker import RolloutWorker
from actors.tasks import load_task_data
from actors.tasks.prompts import PromptStyle
from actors.tasks.synthetic import TextExample
from learner.sft import SFTExample, encode_examples, load_examples, run_sft, sft_target
from system.config import load_config
from system.errors import ConfigError, DataError
from system.models.tokenizer import EOS_ID, build_tokenizer
from system.types import Example

TINY = ["model.tiny.hidden_size=32", "model.tiny.num_hidden_layers=2", "model.tiny.intermediate_size=64",
        "logging.progress=false"]


def _config(*overrides: str):  # type: ignore[no-untyped-def]
    return load_config(None, [*TINY, *overrides])


@pytest.mark.parametrize("profile", ["default", "d1"])
def test_sudoku_targets_score_full_marks(profile: str) -> None:
    cfg = _config("data.task=sudoku", "data.num_train=20", "data.num_test=5")
    train, test = load_task_data(cfg.data)
    ctx = RewardContext(profile=profile)
    for ex in train + test:
        target = sft_target(ex)
        assert target == f"<reasoning>\n</reasoning>\n<answer>\n{ex.reference['solution']}\n</answer>"
        result = rewards.score(ex, target, ctx)
        assert result.score == 1.0 and result.correct, (ex.id, result)


def test_sudoku_target_by_hand() -> None:
    ex = Example("sudoku", "s1", "p", {"puzzle": "0041000340120034", "solution": "3241142343122134", "size": 4})
    assert sft_target(ex) == "<reasoning>\n</reasoning>\n<answer>\n3241142343122134\n</answer>"
    # A prefilled "<reasoning>\n" in the prompt: the target continues it, and the layout still holds.
    prefilled = sft_target(ex, PromptStyle(prefill_reasoning=True))
    assert prefilled == "</reasoning>\n<answer>\n3241142343122134\n</answer>"
    assert rewards.score(ex, prefilled).score == 1.0


def test_countdown_targets_score_full_marks() -> None:
    cfg = _config("data.task=countdown", "data.num_train=20", "data.num_test=5")
    train, test = load_task_data(cfg.data)
    for ex in train + test:
        target = sft_target(ex)
        assert target == f"<reasoning>\n</reasoning>\n<answer>\n{ex.reference['solution']}\n</answer>"
        for profile in ("default", "d1"):
            result = rewards.score(ex, target, RewardContext(profile=profile))
            assert result.score == 1.0 and result.correct, (ex.id, profile, result)


def test_synthetic_targets_are_the_answer() -> None:
    cfg = _config("data.task=add", "data.num_train=10", "data.num_test=3")
    train, _ = load_examples(cfg.data)
    for item in train:
        assert isinstance(item, SFTExample)
        a, b = item.prompt.rstrip("=").split("+")
        assert item.completion == str(int(a) + int(b))
        assert rewards.score(item.example, item.completion).score == 1.0


def test_countdown_without_solution_and_tasks_without_targets_fail_clearly() -> None:
    bare = Example("countdown", "row-7", "p", {"numbers": [1, 2, 3], "target": 6})
    with pytest.raises(DataError, match="countdown example row-7: no recorded 'solution'"):
        sft_target(bare)
    with pytest.raises(ConfigError, match="task 'gsm8k' has no SFT target builder"):
        sft_target(Example("gsm8k", "g1", "q", {"answer": "4"}))


def test_generic_jsonl_rows_still_load_for_synthetic_tasks(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "copy 12", "completion": "12"}\n')
    cfg = _config("data.task=copy", f"data.train_path={path}")
    train, test = load_examples(cfg.data)
    assert train == [TextExample("0", "copy 12", "12")] and test == []


@pytest.mark.parametrize("task", ["sudoku", "countdown", "copy"])
def test_sft_prompt_ids_equal_the_rollout_workers(task: str) -> None:
    cfg = _config(f"data.task={task}", "data.num_train=6", "data.num_test=2", "data.max_prompt_length=48",
                  "decoding.gen_length=32", "decoding.block_length=32", "decoding.steps=4",
                  "rollout.group_size=2", "rollout.decode_batch_size=8")
    items, _ = load_examples(cfg.data)
    items = items[:3]
    encoded = encode_examples(build_tokenizer(), items, 32, EOS_ID, cfg.data.max_prompt_length,
                              PromptStyle.from_config(cfg.data))
    worker = RolloutWorker(cfg)
    groups = worker.generate([item.example for item in items])  # type: ignore[union-attr]
    for (prompt, completion), group in zip(encoded, groups, strict=True):
        assert all(r.prompt_ids.tolist() == prompt for r in group.rollouts)
        assert len(completion) == 32
    if task == "sudoku":
        # <reasoning> \n </reasoning> \n <answer> \n (6 tokens), 16 digits, \n </answer> (2): 24, then 8 EOS.
        assert encoded[0][1][24:] == [EOS_ID] * 8 and EOS_ID not in encoded[0][1][:24]


def test_short_sudoku_sft_trains_and_evaluates(tmp_path: Path) -> None:
    cfg = _config("data.task=sudoku", "data.num_train=64", "data.num_test=8", "data.max_prompt_length=40",
                  "decoding.gen_length=32", "decoding.block_length=32", "decoding.steps=16",
                  "sft.steps=6", "sft.batch_size=8", "sft.warmup_steps=2", "sft.eval_examples=4",
                  f"output_dir={tmp_path}")
    state = torch.get_rng_state()
    summary = run_sft(cfg)
    assert torch.equal(torch.get_rng_state(), state)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(m["sft/loss"]) for m in metrics)
    samples = json.loads((tmp_path / "samples.json").read_text())
    assert len(samples) == 4 and summary["test_exact_match"] == sum(s["correct"] for s in samples) / 4
    assert samples[0]["target"].startswith("<reasoning>\n</reasoning>\n<answer>\n")
    assert (Path(summary["checkpoint"]) / "tokenizer.json").is_file()
