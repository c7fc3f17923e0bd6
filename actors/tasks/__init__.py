"""Tasks: where examples come from (local data files or seeded generators), chosen by name.

Registry (:data:`TASKS`): ``gsm8k``, ``math``, ``aime``, ``countdown``, ``sudoku`` (4x4 and 9x9),
``code`` (HumanEval, MBPP and KodCode layouts), and the synthetic ``copy`` / ``add`` for the tiny
model. Each reads rows with the public datasets' field
names (see the per-task modules) from JSONL, Parquet, CSV or a ``save_to_disk`` directory; countdown
and sudoku can also be generated. Prompts are rendered by :mod:`actors.tasks.prompts`; completions
are scored by :mod:`actors.rewards` (same task names). The SFT toy tasks ``copy`` / ``add`` live in
:mod:`actors.tasks.synthetic`.

Bad input fails at load time: a missing field or malformed row names the file, the row and the
field; an empty dataset fails; an unknown task name lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from actors.tasks import code, maths, puzzles, synthetic
from actors.tasks.loading import Row, read_rows
from system.errors import ConfigError, DataError
from system.types import Example

if TYPE_CHECKING:
    from system.config import DataConfig

__all__ = ["TASKS", "Task", "TaskOptions", "generate_splits", "get_task", "load_examples", "load_task_data",
           "task_names"]


@dataclass(frozen=True)
class TaskOptions:
    """Per-load settings: the code layout (``auto`` or one of humaneval / mbpp / kodcode) and the
    most test cases (sandbox runs) a code example keeps."""

    code_format: str = "auto"
    max_test_cases: int = 16

    @classmethod
    def from_config(cls, cfg: DataConfig) -> TaskOptions:
        return cls(code_format=cfg.code_format, max_test_cases=cfg.code_max_test_cases)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    read_row: Callable[[Row, TaskOptions], Example]
    generate: Callable[[DataConfig, int, int], tuple[list[Example], list[Example]]] | None = None


def _generate_countdown(cfg: DataConfig, n_train: int, n_test: int) -> tuple[list[Example], list[Example]]:
    from actors.generators.countdown import CountdownSpec, generate_countdown

    spec = CountdownSpec(num_numbers=cfg.countdown_numbers, max_number=cfg.countdown_max_number,
                         max_target=cfg.countdown_max_target, ops=cfg.countdown_ops)
    test = [puzzles.countdown_from_item(item, f"countdown-{cfg.seed}-test-{i}")
            for i, item in enumerate(generate_countdown(n_test, spec, seed=f"{cfg.seed}:test"))]
    held_out = {(tuple(sorted(e.reference["numbers"])), e.reference["target"]) for e in test}
    count = n_train
    while True:  # item i depends only on (seed, i): drawing more keeps the earlier ones
        items = generate_countdown(count, spec, seed=f"{cfg.seed}:train")
        kept = [(i, item) for i, item in enumerate(items) if (tuple(sorted(item.numbers)), item.target) not in held_out]
        if len(kept) >= n_train:
            break
        count += n_train - len(kept) + 16
    train = [puzzles.countdown_from_item(item, f"countdown-{cfg.seed}-train-{i}") for i, item in kept[:n_train]]
    return train, test


def _generate_sudoku(cfg: DataConfig, n_train: int, n_test: int) -> tuple[list[Example], list[Example]]:
    from actors.generators.sudoku import generate_sudoku

    size = cfg.sudoku_size
    blanks = cfg.sudoku_blanks or (8 if size == 4 else 45)
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        items = generate_sudoku(n, size, blanks, seed=cfg.seed, split=split, test_fraction=cfg.test_fraction)
        out.append([puzzles.sudoku_from_item(item, f"sudoku{size}-{cfg.seed}-{split}-{i}")
                    for i, item in enumerate(items)])
    return out[0], out[1]


def _generate_synthetic(task: str) -> Callable[[DataConfig, int, int], tuple[list[Example], list[Example]]]:
    def generate(cfg: DataConfig, n_train: int, n_test: int) -> tuple[list[Example], list[Example]]:
        train, test = synthetic.train_test(task, n_train, n_test, cfg.seed)
        return synthetic.as_examples(train, task), synthetic.as_examples(test, task)

    return generate


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("gsm8k", "grade-school math word problems (question / answer with '####')",
         lambda row, _: maths.gsm8k_example(row)),
    Task("math", "competition math, MATH-500 (problem / answer or solution with \\boxed{})",
         lambda row, _: maths.math_example(row)),
    Task("aime", "AIME problems (problem / answer)", lambda row, _: maths.aime_example(row)),
    Task("countdown", "reach a target with + - * / using each number once (nums / target)",
         lambda row, _: puzzles.countdown_row(row), _generate_countdown),
    Task("sudoku", "4x4 or 9x9 sudoku (puzzle / solution, 0 = empty)", lambda row, _: puzzles.sudoku_row(row),
         _generate_sudoku),
    Task("code", "Python functions checked by tests (HumanEval, MBPP, KodCode layouts)",
         lambda row, opts: code.code_example(row, opts.code_format, opts.max_test_cases)),
    Task("copy", "synthetic: repeat a digit string (prompt / answer); the tiny model learns it in minutes",
         lambda row, _: synthetic.synthetic_row(row, "copy"), _generate_synthetic("copy")),
    Task("add", "synthetic: the sum of two numbers below 50 (prompt / answer)",
         lambda row, _: synthetic.synthetic_row(row, "add"), _generate_synthetic("add")),
)}


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    return TASKS[name]


def load_examples(task: str, path: str | Path, options: TaskOptions | None = None) -> list[Example]:
    """Every example of a local data file or ``save_to_disk`` directory for ``task``.

    Raises:
        ConfigError: unknown task. DataError: missing path, empty dataset, malformed row or missing
            field (naming the file, the row and the field), or two rows with the same id.
    """
    spec = get_task(task)
    options = options or TaskOptions()
    examples, seen = [], {}
    for row in read_rows(path):
        example = spec.read_row(row, options)
        if example.id in seen:
            raise DataError(f"{row.where()}: id {example.id!r} repeats row {seen[example.id]}; ids must be unique")
        seen[example.id] = row.number
        examples.append(example)
    return examples


def generate_splits(task: str, cfg: DataConfig, n_train: int, n_test: int) -> tuple[list[Example], list[Example]]:
    """Generated train and test examples that share no puzzle (sudoku: no solution grid)."""
    spec = get_task(task)
    if spec.generate is None:
        generated = [t.name for t in TASKS.values() if t.generate]
        raise ConfigError(f"task {task!r} has no generator (generated tasks: {generated}); give data.train_path")
    return spec.generate(cfg, n_train, n_test)


def load_task_data(cfg: DataConfig) -> tuple[list[Example], list[Example]]:
    """Train and test examples of ``cfg.task``: read from ``train_path`` / ``test_path``, or generated
    (``num_train`` / ``num_test``) when the task has a generator and no path is given."""
    spec = get_task(cfg.task)
    options = TaskOptions.from_config(cfg)
    if cfg.train_path is None and spec.generate is None:
        raise ConfigError(f"task {cfg.task!r} reads its data from files: set data.train_path (and data.test_path)")
    generated: tuple[list[Example], list[Example]] | None = None
    if spec.generate is not None and (cfg.train_path is None or cfg.test_path is None):
        generated = spec.generate(cfg, cfg.num_train if cfg.train_path is None else 0,
                                  cfg.num_test if cfg.test_path is None else 0)
    train = load_examples(cfg.task, cfg.train_path, options) if cfg.train_path else generated[0]  # type: ignore[index]
    if cfg.test_path:
        test = load_examples(cfg.task, cfg.test_path, options)
    else:
        test = generated[1] if generated is not None else []
    return train, test
