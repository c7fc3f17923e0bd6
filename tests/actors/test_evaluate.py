"""evaluate(): an untrained tiny checkpoint saved here, scored on a fixed small split whose answers are
chosen from the checkpoint's own greedy outputs, so the expected accuracy is known by hand; the CLI
prints the table and ends with the same summary as JSON; bad input fails naming the fix."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from actors import rewards
from actors.decoding.reference import ReferenceDecoder
from actors.eval_cli import add_eval_parser
from actors.evaluate import evaluate, evaluate_records, format_table
from actors.generate import completion_text
from actors.tasks.prompts import PromptStyle, prompt_ids
from actors.tasks.synthetic import as_examples, generate
from system.config import load_config
from system.errors import CheckpointError, ConfigError
from system.models.build import new_tiny_model, save_policy
from system.models.tokenizer import EOS_ID, EOT_ID

SETTINGS = ["data.task=copy", "data.num_train=8", "model.tiny.hidden_size=32", "model.tiny.num_hidden_layers=2",
            "model.tiny.intermediate_size=64", "decoding.gen_length=8", "decoding.block_length=4",
            "decoding.steps=4", "decoding.temperature=1.0", "logging.progress=false"]
KEYS = {"task", "split", "checkpoint", "examples", "score", "score_stderr", "accuracy", "correct",
        "completion_length", "components", "gen_length", "block_length", "steps", "temperature", "remasking",
        "profile", "seconds"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A saved untrained checkpoint, its greedy outputs on 5 copy prompts, and a test file whose answers
    are those outputs for rows 0 and 3 (correct) and something else for rows 1, 2, 4 (wrong)."""
    tmp = tmp_path_factory.mktemp("eval")
    cfg = load_config(None, SETTINGS)
    model, tokenizer = new_tiny_model(cfg.model, seed=3)
    checkpoint = save_policy(model, tokenizer, tmp / "ckpt")
    examples = as_examples(generate("copy", 5, seed=11), "copy")
    ids = [prompt_ids(tokenizer, ex, PromptStyle(), cfg.data.max_prompt_length) for ex in examples]
    out = ReferenceDecoder(model.eval(), cfg.decoding.model_copy(update={"temperature": 0.0})).generate(ids)
    rows = out.completion_ids.tolist()
    texts = [completion_text(tokenizer, row, {EOS_ID, EOT_ID}) for row in rows]
    lengths = [next((i for i, t in enumerate(row) if t in (EOS_ID, EOT_ID)), len(row)) for row in rows]
    assert all(t.strip() for t in texts), texts  # the fixed answers below need non-empty outputs
    answers = [t.strip() if i in (0, 3) else t.strip() + "7" for i, t in enumerate(texts)]
    path = tmp / "test.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": ex.prompt, "answer": a}) + "\n"
                            for i, (ex, a) in enumerate(zip(examples, answers))))
    test_examples = [type(ex)("copy", f"q{i}", ex.prompt, {"answer": a}) for i, (ex, a) in enumerate(zip(examples, answers))]
    return {"checkpoint": checkpoint, "test_path": path, "texts": texts, "lengths": lengths, "examples": test_examples,
            "overrides": [*SETTINGS, f"data.test_path={path}"]}


def test_accuracy_is_the_hand_count_of_correct(setup: dict) -> None:
    cfg = load_config(None, setup["overrides"])
    state = torch.get_rng_state()
    summary, records = evaluate_records(cfg, setup["checkpoint"])
    assert torch.equal(torch.get_rng_state(), state)
    assert set(summary) == KEYS
    # Rows 0 and 3 carry the model's own greedy output as the answer: 2 of 5 correct.
    assert summary["correct"] == 2 and summary["accuracy"] == pytest.approx(2 / 5, abs=1e-12)
    assert [r.correct for r in records] == [True, False, False, True, False]
    assert [r.completion for r in records] == setup["texts"]
    assert summary["completion_length"] == pytest.approx(sum(setup["lengths"]) / 5, abs=1e-12)
    # Scores: 1.0 for the two exact rows; the reward's partial credit (computed here, in-process) for the rest.
    expected = [rewards.score(ex, text).score for ex, text in zip(setup["examples"], setup["texts"])]
    assert expected[0] == expected[3] == 1.0 and max(expected[1], expected[2], expected[4]) < 0.8
    assert summary["score"] == pytest.approx(sum(expected) / 5, abs=1e-9)
    assert summary["components"]["exact"] == pytest.approx(2 / 5, abs=1e-12)
    assert all(math.isfinite(v) for v in (summary["score"], summary["score_stderr"], summary["completion_length"]))
    assert (summary["temperature"], summary["gen_length"], summary["split"]) == (0.0, 8, "test")
    assert "copy / test: 5 examples" in format_table(summary, records)


def test_limit_scores_the_first_examples(setup: dict) -> None:
    cfg = load_config(None, setup["overrides"])
    summary = evaluate(cfg, setup["checkpoint"], limit=2)
    assert summary["examples"] == 2 and summary["correct"] == 1  # rows 0 (right) and 1 (wrong)


def test_cli_prints_a_table_then_the_summary_json(setup: dict, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    config = Path(setup["test_path"]).parent / "eval.yaml"
    config.write_text(f"data:\n  task: copy\n  test_path: {setup['test_path']}\n")
    args = parser.parse_args(["eval", "--config", str(config), "--checkpoint", str(setup["checkpoint"]), "--limit", "4",
                              *[x for s in setup["overrides"] if not s.startswith("data.test_path") for x in ("--set", s)]])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary) == KEYS and summary["examples"] == 4 and summary["correct"] == 2
    assert any(line.startswith("accuracy") and "(2 / 4 correct)" in line for line in lines)


def test_bad_input_fails_naming_the_fix(setup: dict, tmp_path: Path) -> None:
    cfg = load_config(None, setup["overrides"])
    with pytest.raises(CheckpointError, match="is not a directory"):
        evaluate(cfg, tmp_path / "missing")
    with pytest.raises(ConfigError, match="unknown split 'valid'; use one of train, test"):
        evaluate(cfg, setup["checkpoint"], split="valid")
    with pytest.raises(ConfigError, match="pass --checkpoint"):
        evaluate(cfg, None)
