"""Scoring a policy on a task split with the d1 evaluation protocol (TASKS.md, "Evaluation protocol").

Owns :func:`evaluate` (config + checkpoint -> summary dict, what ``stabledrl eval`` and the demo call),
:func:`evaluate_policy` (a loaded model -> per-example :class:`EvalRecord` s) and :func:`format_table`.

Protocol: the split's examples (``data.*``: generated or read from ``data.test_path`` /
``data.train_path``), prompts rendered exactly as the RL rollout worker renders them, decoded with
the ``decoding`` knobs (``gen_length``, ``block_length``, ``steps``, remasking) and greedily unless
``greedy=False`` (then ``decoding.temperature`` with a generator seeded by ``seed``), scored by the
task's reward under ``reward.profile`` in a :class:`~actors.reward_worker.RewardWorker` (a time limit
per item, model output never scored in this process). Sudoku's score is its cell accuracy through the
profile (the ``default`` profile also weighs the layout, ``reward.format_weight``).

Summary: ``score`` (mean reward), ``score_stderr`` (standard error of that mean), ``accuracy`` (share
of examples the reward calls ``correct``), ``completion_length`` (mean completion tokens before the
first EOS / end-of-turn token), the mean of every reward component, the decoding settings and the
seconds taken. d1 reported the best checkpoint over training; this scores the one it is given.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from actors.decoding.fast import build_decoder
from actors.generate import completion_text, stop_ids
from actors.reward_worker import RewardWorker
from actors.tasks import load_task_data
from actors.tasks.prompts import PromptStyle, prompt_ids
from system.config import Config, DecodingConfig
from system.errors import CheckpointError, ConfigError, DataError
from system.models.base import DiffusionModel
from system.models.build import build_policy
from system.types import Example

SPLITS = ("train", "test")


@dataclass
class EvalRecord:
    """One scored example: the decoded text, its reward and its length in tokens (before the first stop)."""

    id: str
    completion: str
    score: float
    correct: bool
    length: int
    components: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def split_examples(cfg: Config, split: str, limit: int | None = None) -> list[Example]:
    """The first ``limit`` examples (all when None) of ``split`` (train or test) of ``cfg.data``."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    train, test = load_task_data(cfg.data)
    examples = train if split == "train" else test
    if not examples:
        raise DataError(f"the {split} split of task {cfg.data.task!r} is empty: set data.num_{split} (generated "
                        f"tasks) or data.{split}_path")
    return examples[:limit]


def eval_decoding(cfg: Config, greedy: bool) -> DecodingConfig:
    """The decoding settings of an evaluation: ``cfg.decoding``, at temperature 0 when ``greedy``."""
    return cfg.decoding.model_copy(update={"temperature": 0.0}) if greedy else cfg.decoding


def decode_split(
    model: DiffusionModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example], cfg: Config,
    greedy: bool = True, batch_size: int | None = None,
) -> list[tuple[str, int]]:
    """(completion text, completion tokens before the first stop) per example, in order."""
    decoder = build_decoder(model, eval_decoding(cfg, greedy))  # the configured mode, as rollouts decode
    style, stops = PromptStyle.from_config(cfg.data), stop_ids(model)
    generator = torch.Generator(device=model.device).manual_seed(cfg.seed)
    size = batch_size or cfg.rollout.decode_batch_size
    out: list[tuple[str, int]] = []
    for lo in range(0, len(examples), size):
        ids = [prompt_ids(tokenizer, ex, style, cfg.data.max_prompt_length) for ex in examples[lo:lo + size]]
        decoded = decoder.generate(ids, generator)
        for row in decoded.completion_ids.tolist():
            length = next((i for i, t in enumerate(row) if t in stops), len(row))
            out.append((completion_text(tokenizer, row, stops), length))
    return out


def evaluate_policy(
    model: DiffusionModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example], cfg: Config,
    reward_worker: RewardWorker, greedy: bool = True,
) -> list[EvalRecord]:
    """Decode and score ``examples`` with a loaded policy (see the module docstring)."""
    was_training = model.training
    model.eval()
    try:
        decoded = decode_split(model, tokenizer, examples, cfg, greedy)
    finally:
        model.train(was_training)
    results = reward_worker.score([(ex, text) for ex, (text, _) in zip(examples, decoded)])
    return eval_records(examples, decoded, results)


def eval_records(examples: list[Example], decoded: list[tuple[str, int]], results: list[Any]) -> list[EvalRecord]:
    """One :class:`EvalRecord` per example from its decoded (text, length) and its ``RewardResult``."""
    return [EvalRecord(ex.id, text, float(res.score), bool(res.correct), length, dict(res.components), res.reason)
            for ex, (text, length), res in zip(examples, decoded, results, strict=True)]


def summarize(records: list[EvalRecord]) -> dict[str, Any]:
    """Mean score and its standard error, accuracy, mean completion length, mean of each component."""
    n = len(records)
    if n == 0:
        raise ValueError("no records to summarize")
    scores = [r.score for r in records]
    mean = sum(scores) / n
    var = sum((s - mean) ** 2 for s in scores) / (n - 1) if n > 1 else 0.0
    names = sorted({k for r in records for k in r.components})
    components = {k: sum(r.components.get(k, 0.0) for r in records) / n for k in names}
    return {"examples": n, "score": mean, "score_stderr": math.sqrt(var / n), "accuracy": sum(r.correct for r in records) / n,
            "correct": sum(r.correct for r in records), "completion_length": sum(r.length for r in records) / n,
            "components": components}


def evaluate_records(
    cfg: Config, checkpoint: str | Path | None, limit: int | None = None, split: str = "test", greedy: bool = True,
    reward_worker: RewardWorker | None = None,
) -> tuple[dict[str, Any], list[EvalRecord]]:
    """:func:`evaluate`, also returning every scored example."""
    start = time.monotonic()
    path = checkpoint if checkpoint is not None else cfg.model.path
    if path is None:
        raise ConfigError("no checkpoint to evaluate: pass --checkpoint DIR (or set model.path)")
    if not Path(path).is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory; give a checkpoint directory (e.g. RUN/final)")
    model, tokenizer = build_policy(cfg.model.model_copy(update={"path": str(path)}), cfg.seed)
    examples = split_examples(cfg, split, limit)
    worker = RewardWorker(cfg.reward) if reward_worker is None else reward_worker
    try:
        records = evaluate_policy(model, tokenizer, examples, cfg, worker, greedy)
    finally:
        if reward_worker is None:
            worker.close()
    decoding = eval_decoding(cfg, greedy)
    summary = {"task": cfg.data.task, "split": split, "checkpoint": str(path), **summarize(records),
               "gen_length": decoding.gen_length, "block_length": decoding.block_length, "steps": decoding.steps,
               "temperature": decoding.temperature, "remasking": decoding.remasking, "profile": cfg.reward.profile,
               "seconds": round(time.monotonic() - start, 2)}
    return summary, records


def evaluate(
    cfg: Config, checkpoint: str | Path | None, limit: int | None = None, split: str = "test", greedy: bool = True,
    reward_worker: RewardWorker | None = None,
) -> dict[str, Any]:
    """Score ``checkpoint`` (None: ``cfg.model.path``) on the first ``limit`` examples of ``split`` of
    ``cfg.data``; returns the summary (see the module docstring). A given ``reward_worker`` is reused
    and left open."""
    return evaluate_records(cfg, checkpoint, limit, split, greedy, reward_worker)[0]


def write_records(records: list[EvalRecord], path: str | Path) -> None:
    """Every scored example as one JSON line."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))


def format_table(summary: dict[str, Any], records: list[EvalRecord] | None = None, show: int = 8) -> str:
    """A plain-text table: the first ``show`` examples (when given), then the summary metrics."""
    lines = []
    if records:
        lines.append(f"{'example':<24} {'score':>7} {'correct':>7} {'length':>6}  completion")
        for r in records[:show]:
            text = r.completion if len(r.completion) <= 60 else r.completion[:57] + "..."
            lines.append(f"{r.id[:24]:<24} {r.score:>7.3f} {('yes' if r.correct else 'no'):>7} {r.length:>6}  {text!r}")
        lines.append("")
    mode = "greedy" if summary["temperature"] == 0 else f"temperature {summary['temperature']}"
    lines.append(f"{summary['task']} / {summary['split']}: {summary['examples']} examples, gen_length "
                 f"{summary['gen_length']}, block_length {summary['block_length']}, steps {summary['steps']}, "
                 f"{mode}, reward profile {summary['profile']}")
    rows = [("score (mean)", f"{summary['score']:.4f} +- {summary['score_stderr']:.4f}"),
            ("accuracy", f"{summary['accuracy']:.4f} ({summary['correct']} / {summary['examples']} correct)"),
            ("completion length", f"{summary['completion_length']:.1f} tokens")]
    rows += [(f"  {name}", f"{value:.4f}") for name, value in summary["components"].items()]
    width = max(len(name) for name, _ in rows)
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)
