"""Sudoku rewards (4x4 and 9x9; puzzles use ``0`` for an empty cell).

``default``: the grid is the ASCII digits of the last ``<answer>`` span (separators and spaces
ignored) and must have exactly size*size of them (no padding). A completion that is a valid
solution (every row, column and box a permutation of 1..size) and keeps every given is correct:
correctness 1.0, whatever solution the file recorded (non-unique puzzles are judged fairly).
Otherwise correctness is the share of empty cells equal to the recorded solution, or 0.0 when a
given was changed. Components: cell_accuracy, valid, givens_kept. score = (1 - w) * correctness +
w * layout.

``d1`` (the published code): the characters of the last ``<answer>`` span for which ``str.isdigit``
holds (Unicode digits included), padded with ``0`` or cut to size*size; the score is the share of
empty cells equal to the solution. Rows, columns, boxes and givens are not checked.
"""

from __future__ import annotations

import re

from actors.generators.sudoku import is_valid_solution, keeps_givens
from actors.rewards.context import RewardContext
from actors.rewards.extract import last_answer, layout_ok
from system.types import Example, RewardResult


def _reference(example: Example) -> tuple[str, str, int]:
    puzzle, solution = str(example.reference["puzzle"]), str(example.reference["solution"])
    return puzzle, solution, int(example.reference.get("size") or round(len(puzzle) ** 0.5))


def _blank_accuracy(grid: str, puzzle: str, solution: str) -> float:
    blanks = [i for i, ch in enumerate(puzzle) if ch == "0"]
    if not blanks:
        return 0.0
    return sum(grid[i] == solution[i] for i in blanks) / len(blanks)


def sudoku_default(example: Example, completion: str, ctx: RewardContext) -> RewardResult:
    puzzle, solution, size = _reference(example)
    fmt = 1.0 if layout_ok(completion) else 0.0
    empty = {"cell_accuracy": 0.0, "valid": 0.0, "givens_kept": 0.0}
    content, why = last_answer(completion)
    if content is None:
        return ctx.blend(0.0, fmt, empty, why, False)
    grid = "".join(ch for ch in content if ch in "0123456789")
    if len(grid) != size * size:
        return ctx.blend(0.0, fmt, empty, f"the answer has {len(grid)} digits, not {size * size}", False)
    accuracy = _blank_accuracy(grid, puzzle, solution)
    valid, kept = is_valid_solution(grid, size), keeps_givens(puzzle, grid)
    parts = {"cell_accuracy": accuracy, "valid": float(valid), "givens_kept": float(kept)}
    if valid and kept:
        return ctx.blend(1.0, fmt, parts, "a valid solution keeping every given", True)
    if not kept:
        return ctx.blend(0.0, fmt, parts, "changes a given cell", False)
    return ctx.blend(accuracy, fmt, parts, f"not a valid solution; {accuracy:.3f} of the empty cells right", False)


_D1_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def sudoku_d1(example: Example, completion: str, ctx: RewardContext) -> RewardResult:
    puzzle, solution, size = _reference(example)
    cells = size * size
    matches = _D1_ANSWER.findall(completion)
    if not matches:
        return RewardResult(0.0, {"cell_accuracy": 0.0}, "d1 sudoku: no <answer>...</answer>", False)
    digits = "".join(ch for ch in matches[-1].strip() if ch.isdigit())
    if not digits:
        return RewardResult(0.0, {"cell_accuracy": 0.0}, "d1 sudoku: no digits in the answer", False)
    grid = (digits + "0" * cells)[:cells]
    accuracy = _blank_accuracy(grid, puzzle, solution)
    return RewardResult(accuracy, {"cell_accuracy": accuracy}, f"d1 sudoku: {accuracy:.3f} of the empty cells right",
                        accuracy == 1.0)
