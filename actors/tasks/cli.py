"""The ``stabledrl data`` subcommands: ``generate`` (seeded countdown / sudoku train and test files
that share no puzzle, and for sudoku no solution grid), ``check`` (load a data file for a task and
report it) and ``list`` (the known tasks). Wired into ``system/cli.py`` by :func:`add_data_parser`.

``generate`` writes ``OUT/train.jsonl``, ``OUT/test.jsonl`` (the public field names: sudoku ``id,
puzzle, solution``; countdown ``id, nums, target, solution``) and ``OUT/meta.json`` (the settings and
counts), and prints a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from system.config import DataConfig, format_validation_error
from system.data import write_jsonl
from system.errors import ConfigError
from system.types import Example


def _row(example: Example) -> dict[str, Any]:
    ref = example.reference
    if example.task == "sudoku":
        return {"id": example.id, "puzzle": ref["puzzle"], "solution": ref["solution"]}
    return {"id": example.id, "nums": ref["numbers"], "target": ref["target"], "solution": ref.get("solution")}


def _config(args: argparse.Namespace) -> DataConfig:
    values = {"task": args.task, "seed": args.seed, "sudoku_size": args.size, "sudoku_blanks": args.blanks,
              "test_fraction": args.test_fraction, "countdown_numbers": args.numbers,
              "countdown_max_number": args.max_number, "countdown_max_target": args.max_target,
              "countdown_ops": args.ops}
    try:
        return DataConfig.model_validate(values)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "stabledrl data generate")) from None


def cmd_generate(args: argparse.Namespace) -> int:
    from actors.tasks import generate_splits

    if args.n < 1 or args.n_test < 0:
        raise ConfigError(f"--n ({args.n}) must be at least 1 and --n-test ({args.n_test}) at least 0")
    cfg = _config(args)
    train, test = generate_splits(args.task, cfg, args.n, args.n_test)
    out = Path(args.out)
    write_jsonl(out / "train.jsonl", [_row(e) for e in train])
    write_jsonl(out / "test.jsonl", [_row(e) for e in test])
    meta: dict[str, Any] = {"task": args.task, "seed": args.seed, "n_train": len(train), "n_test": len(test)}
    if args.task == "sudoku":
        train_grids = {e.reference["solution"] for e in train}
        test_grids = {e.reference["solution"] for e in test}
        meta |= {"size": cfg.sudoku_size, "blanks": cfg.sudoku_blanks or (8 if cfg.sudoku_size == 4 else 45),
                 "test_fraction": cfg.test_fraction, "train_grids": len(train_grids), "test_grids": len(test_grids),
                 "shared_grids": len(train_grids & test_grids)}
    else:
        meta |= {"numbers": cfg.countdown_numbers, "max_number": cfg.countdown_max_number,
                 "max_target": cfg.countdown_max_target, "ops": cfg.countdown_ops}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({"out": str(out), **meta}))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from actors.tasks import TaskOptions, load_examples

    examples = load_examples(args.task, args.path, TaskOptions(code_format=args.code_format))
    print(json.dumps({"task": args.task, "path": str(args.path), "examples": len(examples),
                      "first_id": examples[0].id}))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from actors.tasks import TASKS

    for task in TASKS.values():
        print(f"{task.name:<10} {'generate, ' if task.generate else ''}read  {task.description}")
    return 0


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data`` (generate / check / list) to a ``stabledrl`` subparsers object."""
    parser = subparsers.add_parser("data", help="task data: generate puzzles, check files, list tasks")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    g = sub.add_parser("generate", help="seeded countdown or sudoku train/test JSONL files")
    g.add_argument("--task", required=True, choices=["countdown", "sudoku"])
    g.add_argument("--n", type=int, required=True, help="train examples")
    g.add_argument("--n-test", type=int, default=256, help="test examples (default 256, as d1 evaluates)")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--size", type=int, default=4, help="sudoku: 4 or 9")
    g.add_argument("--blanks", type=int, default=None, help="sudoku: empty cells (default 8 for 4x4, 45 for 9x9)")
    g.add_argument("--test-fraction", type=float, default=0.2, help="sudoku: share of grids held out for test")
    g.add_argument("--numbers", type=int, default=3, help="countdown: numbers per puzzle")
    g.add_argument("--max-number", type=int, default=99, help="countdown: numbers in [1, this]")
    g.add_argument("--max-target", type=int, default=100, help="countdown: targets in [1, this]")
    g.add_argument("--ops", default="+-*/", help="countdown: operators of the recorded solution")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("check", help="load a data file for a task and report what it holds")
    c.add_argument("--task", required=True)
    c.add_argument("--code-format", default="auto", choices=["auto", "humaneval", "mbpp", "kodcode"])
    c.add_argument("path", help="a .jsonl / .parquet / .csv file or a save_to_disk directory")
    c.set_defaults(func=cmd_check)

    ls = sub.add_parser("list", help="the known tasks")
    ls.set_defaults(func=cmd_list)
    return parser
