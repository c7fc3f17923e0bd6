"""Generators: sudoku grids, solver and puzzles (one solution each, splits share no grid), countdown
puzzles (recorded solution reaches the target with each number once); seeded and reproducible,
and they leave the global random state alone."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from actors.generators.countdown import CountdownSpec, generate_countdown
from actors.generators.sudoku import (
    MAX_BLANKS,
    all_grids_4x4,
    count_solutions,
    generate_sudoku,
    grid_split,
    is_valid_solution,
    keeps_givens,
    make_puzzle,
    solve,
    units,
)
from actors.rewards.arith import STRICT, evaluate, literals, parse
from system.errors import DataError

# Rows of a valid 4x4 grid: 1234 / 3412 / 2143 / 4321 (boxes {1,2,3,4} each).
GRID = "1234341221434321"


def test_units_cover_rows_columns_boxes():
    u = units(4)
    assert len(u) == 12 and all(len(x) == 4 for x in u)
    assert u[0] == [0, 1, 2, 3]  # first row
    assert u[4] == [0, 4, 8, 12]  # first column
    assert u[8] == [0, 1, 4, 5]  # top-left 2x2 box
    assert len(units(9)) == 27 and units(9)[18] == [0, 1, 2, 9, 10, 11, 18, 19, 20]


def test_validity_and_givens():
    assert is_valid_solution(GRID, 4)
    assert not is_valid_solution("1234341221434312", 4)  # last row 4312 repeats column digits
    assert not is_valid_solution("1234" * 4, 4)  # rows fine, columns all equal
    assert not is_valid_solution(GRID[:15], 4)
    assert not keeps_givens("1003000000000000", GRID)  # a given 3 at cell 3, where GRID has 4
    assert keeps_givens("1000000000000001", GRID)  # GRID[15] == '1'


def test_there_are_288_valid_4x4_grids():
    grids = all_grids_4x4()
    assert len(grids) == 288 and len(set(grids)) == 288
    assert all(is_valid_solution(g, 4) for g in grids)
    assert GRID in grids


def test_count_solutions_stops_at_the_limit():
    assert count_solutions(GRID, 4) == 1
    assert count_solutions("0" * 16, 4, limit=1000) == 288
    assert count_solutions("0" * 16, 4, limit=2) == 2
    assert count_solutions("1100" + "0" * 12, 4) == 0  # two 1s in a row: inconsistent givens
    # Blank a 2x2 "rectangle" of cells holding 1 2 / 2 1 in two rows and two boxes: two completions.
    # GRID rows 0 and 2: cells 0,1 = 1,2 and cells 8,9 = 2,1 -> swap both -> another valid grid.
    puzzle = "00" + GRID[2:8] + "00" + GRID[10:]
    assert count_solutions(puzzle, 4) == 2


def test_solve_finds_the_completion_and_random_grids_are_valid():
    assert solve("0" + GRID[1:], 4) == GRID
    rng = random.Random(3)
    grid = solve("0" * 81, 9, rng)
    assert grid is not None and is_valid_solution(grid, 9)


@pytest.mark.parametrize("blanks", [1, 8, 12])
def test_4x4_puzzles_have_exactly_one_solution(blanks):
    items = generate_sudoku(60, 4, blanks, seed=1)
    assert len({i.puzzle for i in items}) == 60  # distinct
    for item in items:
        assert item.puzzle.count("0") == blanks
        assert keeps_givens(item.puzzle, item.solution) and is_valid_solution(item.solution, 4)
        assert count_solutions(item.puzzle, 4, limit=2) == 1  # checked by the search, not the generator's bitsets


def test_9x9_puzzles_have_exactly_one_solution():
    items = generate_sudoku(3, 9, 40, seed=2)
    for item in items:
        assert item.puzzle.count("0") == 40
        assert count_solutions(item.puzzle, 9, limit=2) == 1
        assert solve(item.puzzle, 9) == item.solution


def test_blank_range_and_limits():
    items = generate_sudoku(40, 4, (4, 10), seed=0)
    assert {i.puzzle.count("0") for i in items} <= set(range(4, 11))
    assert len({i.puzzle.count("0") for i in items}) > 1
    with pytest.raises(DataError, match=r"\[1, 12\]"):
        generate_sudoku(1, 4, MAX_BLANKS[4] + 1)
    with pytest.raises(ValueError, match="size 5"):
        generate_sudoku(1, 5, 4)


def test_splits_share_no_grid_and_cover_all_grids():
    train = generate_sudoku(3000, 4, 6, seed=0, split="train")
    test = generate_sudoku(300, 4, 6, seed=0, split="test")
    train_grids, test_grids = {i.solution for i in train}, {i.solution for i in test}
    assert not train_grids & test_grids
    assert not {i.puzzle for i in train} & {i.puzzle for i in test}
    # Every grid belongs to exactly one split, by hash, whatever the sampling seed:
    split_of = {g: grid_split(g, 0.2) for g in all_grids_4x4()}
    assert all(split_of[g] == "train" for g in train_grids) and all(split_of[g] == "test" for g in test_grids)
    other_seed = generate_sudoku(300, 4, 6, seed=7, split="test")
    assert {i.solution for i in other_seed} <= {g for g, s in split_of.items() if s == "test"}
    assert 20 < sum(s == "test" for s in split_of.values()) < 100  # about 0.2 * 288 = 58


def test_9x9_splits_share_no_grid():
    train = generate_sudoku(3, 9, 30, seed=0, split="train", test_fraction=0.5)
    test = generate_sudoku(3, 9, 30, seed=0, split="test", test_fraction=0.5)
    assert all(grid_split(i.solution, 0.5) == "train" for i in train)
    assert all(grid_split(i.solution, 0.5) == "test" for i in test)


def test_same_seed_same_data_and_global_rng_untouched():
    py_state, torch_state = random.getstate(), torch.random.get_rng_state()
    a = generate_sudoku(50, 4, 8, seed=5)
    b = generate_sudoku(50, 4, 8, seed=5)
    c = generate_sudoku(50, 4, 8, seed=6)
    assert a == b and a != c
    assert generate_countdown(20, seed=5) == generate_countdown(20, seed=5) != generate_countdown(20, seed=6)
    assert random.getstate() == py_state and torch.equal(torch.random.get_rng_state(), torch_state)


def test_make_puzzle_gives_up_when_the_blanks_are_impossible():
    # A puzzle with one solution has at least 4 givens, so 13 blanks (3 givens) cannot be reached.
    assert make_puzzle(GRID, 4, 13, random.Random(0), passes=3) is None


@pytest.mark.parametrize("spec", [CountdownSpec(), CountdownSpec(num_numbers=4, max_number=20, max_target=50),
                                  CountdownSpec(ops="+-", max_target=300)])
def test_countdown_solutions_reach_the_target_with_each_number_once(spec):
    items = generate_countdown(100, spec, seed=3)
    for item in items:
        assert len(item.numbers) == spec.num_numbers
        assert all(spec.min_number <= n <= spec.max_number for n in item.numbers)
        assert spec.min_target <= item.target <= spec.max_target
        rpn = parse(item.solution, STRICT)
        assert Counter(int(t) for t in literals(rpn)) == Counter(item.numbers)
        assert evaluate(rpn, STRICT) == item.target
        assert set(item.solution) - set("0123456789 ()") <= set(spec.ops)


def test_countdown_recorded_solution_by_hand():
    item = generate_countdown(1, seed=0)[0]
    # The first item of seed 0 (a regression anchor): check its arithmetic by hand.
    assert (item.numbers, item.target, item.solution) == ([8, 3, 34], 29, "(3 + 34) - 8")
    # 3 + 34 = 37 (a positive integer step), 37 - 8 = 29.


def test_countdown_spec_errors():
    with pytest.raises(DataError, match="num_numbers 7"):
        generate_countdown(1, CountdownSpec(num_numbers=7))
    with pytest.raises(DataError, match="ops"):
        generate_countdown(1, CountdownSpec(ops="+^"))
    with pytest.raises(DataError, match="no target"):
        generate_countdown(1, CountdownSpec(max_number=1, min_target=50, max_target=60, ops="+"))
