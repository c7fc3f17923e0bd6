"""Countdown and sudoku as examples: from data files (public field names) and from the generators.

Countdown rows: ``nums`` / ``numbers`` (a list of integers) and ``target`` (Countdown-Tasks-3to4), or
d1's test layout ``input`` ("30,100,93") and ``output`` ("23"); an optional ``solution``.
Sudoku rows: ``puzzle`` / ``Puzzle`` / ``quizzes`` and ``solution`` / ``Solution`` / ``solutions``
(d1's CSV, Kaggle's 9x9 set); ``0`` or ``.`` marks an empty cell; 16 cells (4x4) or 81 (9x9). The
solution must be a valid grid that keeps the puzzle's givens (uniqueness is not required: the
default reward accepts any valid completion).
"""

from __future__ import annotations

from actors.generators.countdown import CountdownItem
from actors.generators.sudoku import SudokuItem, is_valid_solution, keeps_givens
from actors.tasks.loading import Row
from actors.tasks.maths import row_id
from system.types import Example


def countdown_prompt(numbers: list[int], target: int) -> str:
    # The instance goes last (as the sudoku prompt's puzzle): a left-truncated prompt keeps it.
    return ("Write an arithmetic expression that equals the target, using every given number exactly once; "
            "you may use +, -, * and / and parentheses. After reasoning, give only the expression inside "
            "<answer></answer>, without an equals sign or the target. For example, for the numbers [3, 5, 7] "
            f"and the target 22 a valid answer is <answer>\n3*5+7\n</answer>.\n\nNumbers: {numbers}\n"
            f"Target: {target}")


def countdown_example(numbers: list[int], target: int, id: str, solution: str | None = None) -> Example:
    reference = {"numbers": list(numbers), "target": target} | ({"solution": solution} if solution else {})
    return Example("countdown", id, countdown_prompt(list(numbers), target), reference)


def _countdown_numbers(row: Row) -> list[int]:
    if row.has("nums", "numbers"):
        field = "nums" if row.has("nums") else "numbers"
        value = row.data[field]
        if isinstance(value, tuple | list) and value and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            return list(value)
        raise row.fail(field, f"must be a non-empty list of integers, got {value!r}")
    text = row.text("input")
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise row.fail("input", f"must be comma-separated integers like '30,100,93', got {text!r}") from None


def countdown_row(row: Row) -> Example:
    numbers = _countdown_numbers(row)
    target = row.integer("target", "output")
    return countdown_example(numbers, target, row_id(row, "id"), row.optional_text("solution"))


def countdown_from_item(item: CountdownItem, id: str) -> Example:
    return countdown_example(item.numbers, item.target, id, item.solution)


def sudoku_prompt(puzzle: str, size: int) -> str:
    box = "2x2" if size == 4 else "3x3"
    return (f"Solve this {size}x{size} Sudoku puzzle. It is given as a string of {size * size} digits read left "
            f"to right, top to bottom, where 0 marks an empty cell. Fill every empty cell with a digit from 1 to "
            f"{size} so that each row, each column and each {box} box holds every digit exactly once, and keep "
            f"the given digits. Inside <answer></answer> give only the completed grid as {size * size} digits "
            f"without spaces or separators.\n\nPuzzle: {puzzle}")


def sudoku_example(puzzle: str, solution: str, id: str) -> Example:
    size = 4 if len(puzzle) == 16 else 9
    return Example("sudoku", id, sudoku_prompt(puzzle, size), {"puzzle": puzzle, "solution": solution, "size": size})


def sudoku_row(row: Row) -> Example:
    puzzle = row.text("puzzle", "Puzzle", "quizzes").strip().replace(".", "0")
    solution = row.text("solution", "Solution", "solutions").strip()
    field = "puzzle" if row.has("puzzle") else "Puzzle" if row.has("Puzzle") else "quizzes"
    if len(puzzle) not in (16, 81):
        raise row.fail(field, f"has {len(puzzle)} cells; a 4x4 puzzle has 16, a 9x9 one 81")
    size = 4 if len(puzzle) == 16 else 9
    if any(ch not in "0123456789"[:size + 1] for ch in puzzle):
        raise row.fail(field, f"must hold only digits 0-{size} (0 or '.' for an empty cell), got {puzzle!r}")
    sol_field = next(n for n in ("solution", "Solution", "solutions") if row.has(n))
    if len(solution) != len(puzzle) or not is_valid_solution(solution, size):
        raise row.fail(sol_field, f"{solution!r} is not a valid {size}x{size} grid")
    if not keeps_givens(puzzle, solution):
        raise row.fail(sol_field, "disagrees with a given digit of the puzzle")
    return sudoku_example(puzzle, solution, row_id(row, "id"))


def sudoku_from_item(item: SudokuItem, id: str) -> Example:
    return sudoku_example(item.puzzle, item.solution, id)
