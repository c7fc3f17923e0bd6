"""Sudoku rewards: cell accuracy over the blanks plus validity and givens (default), and d1's
published scoring (digit padding / truncation, no validity check)."""

from __future__ import annotations

import pytest

from actors.generators.sudoku import generate_sudoku, is_valid_solution
from actors.rewards import RewardContext, score
from system.types import Example

DEFAULT, D1 = RewardContext("default"), RewardContext("d1")
# Blanks at cells 0, 1, 4, 5, 6, 9, 12, 13 (8 of them); solution rows 3241 / 1423 / 4312 / 2134.
PUZZLE, SOLUTION = "0041000340120034", "3241142343122134"
EX = Example("sudoku", "s", "q", {"puzzle": PUZZLE, "solution": SOLUTION, "size": 4})


def wrap(grid: str) -> str:
    return f"<reasoning>\nFill the rows.\n</reasoning>\n<answer>\n{grid}\n</answer>\n"


def test_the_fixture_is_a_valid_grid():
    assert is_valid_solution(SOLUTION, 4) and PUZZLE.count("0") == 8


def test_correct_in_both_profiles():
    result = score(EX, wrap(SOLUTION), DEFAULT)
    assert result.correct and result.score == pytest.approx(1.0)
    assert result.components == {"correctness": 1.0, "format": 1.0, "cell_accuracy": 1.0, "valid": 1.0,
                                 "givens_kept": 1.0}
    assert score(EX, wrap("3241\n1423\n4312\n2134"), DEFAULT).correct  # separators ignored
    assert score(EX, wrap("3 2 4 1 | 1 4 2 3 | 4 3 1 2 | 2 1 3 4"), DEFAULT).correct
    assert score(EX, wrap(SOLUTION), D1).score == 1.0


def test_partially_right_grid():
    # Swap cells 0 and 1 (3,2 -> 2,3): both blanks wrong, 6 of 8 blanks right; the grid is invalid
    # (column 0 holds 2 twice), givens kept. Default: correctness 6/8 = 0.75 -> 0.9 * 0.75 + 0.1 = 0.775.
    grid = "2341" + SOLUTION[4:]
    result = score(EX, wrap(grid), DEFAULT)
    assert result.components["cell_accuracy"] == pytest.approx(0.75) and result.components["valid"] == 0.0
    assert result.score == pytest.approx(0.775) and not result.correct
    assert score(EX, wrap(grid), D1).score == pytest.approx(0.75)


def test_changed_given_scores_zero_in_default_but_full_in_d1():
    # Cell 3 is a given 1; the answer swaps cells 2 and 3 of row 0 ... and all blanks stay right.
    grid = "3214" + SOLUTION[4:]
    assert score(EX, wrap(grid), D1).score == 1.0  # d1 reads only the blanks
    result = score(EX, wrap(grid), DEFAULT)
    assert result.components["givens_kept"] == 0.0 and result.components["correctness"] == 0.0


def test_d1_padding_and_truncation():
    # "3241" is padded to "3241000000000000": blanks 0 and 1 right, the other 6 wrong -> 2/8.
    assert score(EX, wrap("3241"), D1).score == pytest.approx(0.25)
    assert score(EX, wrap("3241"), DEFAULT).components["correctness"] == 0.0  # 4 digits, not 16
    # 17 digits: d1 cuts to 16 (full marks); default refuses the count.
    assert score(EX, wrap(SOLUTION + "9"), D1).score == 1.0
    assert "17 digits, not 16" in score(EX, wrap(SOLUTION + "9"), DEFAULT).reason
    assert score(EX, "<answer>no digits</answer>", D1).score == 0.0
    assert score(EX, SOLUTION, D1).score == 0.0 and score(EX, SOLUTION, DEFAULT).score == 0.0  # no tags


def test_unicode_digits_and_hedges():
    arabic = SOLUTION.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    # d1: str.isdigit() keeps Arabic-Indic digits, which never equal the ASCII solution -> 0 of 8.
    assert score(EX, wrap(arabic), D1).score == 0.0
    assert "0 digits" in score(EX, wrap(arabic), DEFAULT).reason
    hedge = wrap("2341" + SOLUTION[4:]) + wrap(SOLUTION)
    assert score(EX, hedge, D1).score == 1.0  # the last answer
    assert score(EX, hedge, DEFAULT).components["correctness"] == 0.0  # two different answers


def test_non_unique_puzzle_accepts_any_valid_grid():
    # An empty 4x4 puzzle: any valid grid solves it, whatever the file recorded.
    ex = Example("sudoku", "e", "q", {"puzzle": "0" * 16, "solution": SOLUTION, "size": 4})
    other = "1234341221434321"
    assert is_valid_solution(other, 4)
    assert score(ex, wrap(other), DEFAULT).correct
    # d1 compares with the recorded grid: 1234341221434321 vs 3241142343122134 agree only at cells 1
    # and 5 -> 2 / 16 blanks.
    assert score(ex, wrap(other), D1).score == pytest.approx(0.125)


def test_9x9():
    item = generate_sudoku(1, 9, 30, seed=4)[0]
    ex = Example("sudoku", "n", "q", {"puzzle": item.puzzle, "solution": item.solution, "size": 9})
    assert score(ex, wrap(item.solution), DEFAULT).correct and score(ex, wrap(item.solution), D1).score == 1.0
    blank = item.puzzle.index("0")
    wrong = item.solution[:blank] + ("1" if item.solution[blank] != "1" else "2") + item.solution[blank + 1:]
    result = score(ex, wrap(wrong), DEFAULT)
    assert result.components["cell_accuracy"] == pytest.approx(29 / 30) and not result.correct
