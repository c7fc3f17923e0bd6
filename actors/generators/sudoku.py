"""Sudoku grids and puzzles (4x4 with 2x2 boxes, 9x9 with 3x3 boxes): checking, solving, counting
solutions, and a seeded generator of puzzles with exactly one solution.

A grid is a string of ``size * size`` characters read row by row; ``'0'`` is an empty cell, ``'1'`` ..
``str(size)`` are digits. Only 288 valid 4x4 grids exist, so train and test are split by *solution
grid*: :func:`grid_split` assigns every grid to one split by a hash of the grid and a ``split_seed``
(not the sampling seed), so the two splits never share a grid however many puzzles are drawn, and
the sampling seed can change without moving grids between splits. (d1's 4x4 test file has 500
puzzles on only 229 distinct grids, shared with training.)

Puzzles are made by blanking cells of a grid in a seeded random order, keeping a blank only while
the puzzle still has one solution (:func:`count_solutions` stops at 2); a pass that cannot reach the
requested number of blanks starts again with a new order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from system.errors import DataError

SIZES = {4: 2, 9: 3}  # grid size -> box side
MAX_BLANKS = {4: 12, 9: 64}  # most blanks a puzzle with a unique solution can have (4 / 17 givens)


def box_side(size: int) -> int:
    if size not in SIZES:
        raise ValueError(f"sudoku size {size} is not supported; use one of {sorted(SIZES)}")
    return SIZES[size]


def units(size: int) -> list[list[int]]:
    """Cell indices of every row, column and box (3 * size lists of ``size`` cells)."""
    side = box_side(size)
    rows = [[r * size + c for c in range(size)] for r in range(size)]
    cols = [[r * size + c for r in range(size)] for c in range(size)]
    boxes = [[(br + r) * size + bc + c for r in range(side) for c in range(side)]
             for br in range(0, size, side) for bc in range(0, size, side)]
    return rows + cols + boxes


def is_valid_solution(grid: str, size: int) -> bool:
    """True when ``grid`` is complete and every row, column and box holds 1..size once each."""
    if len(grid) != size * size:
        return False
    digits = set("123456789"[:size])
    return all({grid[i] for i in unit} == digits for unit in units(size))


def keeps_givens(puzzle: str, grid: str) -> bool:
    """True when every filled cell of ``puzzle`` has the same digit in ``grid``."""
    return len(puzzle) == len(grid) and all(p == "0" or p == g for p, g in zip(puzzle, grid))


class _Board:
    """Bitmask state of a partial grid for the backtracking search (bit d set = digit d used)."""

    def __init__(self, puzzle: str, size: int) -> None:
        self.size, self.side = size, box_side(size)
        self.cells = [int(ch) for ch in puzzle]
        self.rows, self.cols, self.boxes = [0] * size, [0] * size, [0] * size
        self.full = ((1 << size) - 1) << 1
        self.consistent = True
        for i, value in enumerate(self.cells):
            if value:
                if not self.candidates(i) & (1 << value):
                    self.consistent = False
                self.place(i, value)

    def unit_ids(self, i: int) -> tuple[int, int, int]:
        r, c = divmod(i, self.size)
        return r, c, (r // self.side) * self.side + c // self.side

    def candidates(self, i: int) -> int:
        r, c, b = self.unit_ids(i)
        return self.full & ~(self.rows[r] | self.cols[c] | self.boxes[b])

    def place(self, i: int, value: int) -> None:
        r, c, b = self.unit_ids(i)
        bit = 1 << value
        self.rows[r] |= bit
        self.cols[c] |= bit
        self.boxes[b] |= bit
        self.cells[i] = value

    def clear(self, i: int, value: int) -> None:
        r, c, b = self.unit_ids(i)
        bit = ~(1 << value)
        self.rows[r] &= bit
        self.cols[c] &= bit
        self.boxes[b] &= bit
        self.cells[i] = 0

    def most_constrained(self) -> tuple[int, int] | None:
        """(cell, candidate mask) of the empty cell with the fewest candidates; None when full."""
        best, best_mask, best_count = -1, 0, self.size + 1
        for i, value in enumerate(self.cells):
            if value == 0:
                mask = self.candidates(i)
                count = mask.bit_count()
                if count < best_count:
                    best, best_mask, best_count = i, mask, count
                    if count <= 1:
                        break
        return None if best < 0 else (best, best_mask)


def _search(board: _Board, rng: random.Random | None) -> Iterator[str]:
    """Every completion of ``board`` (depth-first, most-constrained cell first)."""
    choice = board.most_constrained()
    if choice is None:
        yield "".join(map(str, board.cells))
        return
    cell, mask = choice
    values = [v for v in range(1, board.size + 1) if mask & (1 << v)]
    if rng is not None:
        rng.shuffle(values)
    for value in values:
        board.place(cell, value)
        yield from _search(board, rng)
        board.clear(cell, value)


def count_solutions(puzzle: str, size: int, limit: int = 2) -> int:
    """Number of completions of ``puzzle``, counting no further than ``limit``."""
    board = _Board(puzzle, size)
    if not board.consistent:
        return 0
    count = 0
    for _ in _search(board, None):
        count += 1
        if count >= limit:
            break
    return count


def solve(puzzle: str, size: int, rng: random.Random | None = None) -> str | None:
    """One completion of ``puzzle`` (a random one when ``rng`` is given), or None."""
    board = _Board(puzzle, size)
    return next(_search(board, rng), None) if board.consistent else None


@lru_cache(maxsize=1)
def all_grids_4x4() -> tuple[str, ...]:
    """The 288 valid 4x4 grids, in lexicographic order."""
    return tuple(sorted(_search(_Board("0" * 16, 4), None)))


@lru_cache(maxsize=1)
def _grid_masks_4x4() -> tuple[tuple[int, ...], ...]:
    """``masks[cell][digit]``: bit k set when grid k of :func:`all_grids_4x4` has ``digit`` at ``cell``."""
    grids = all_grids_4x4()
    return tuple(tuple(sum(1 << k for k, g in enumerate(grids) if g[cell] == str(d)) for d in range(5))
                 for cell in range(16))


def _unique(puzzle: str, size: int) -> bool:
    """Exactly one completion; for 4x4 by intersecting the grids that agree with each given."""
    if size != 4:
        return count_solutions(puzzle, size, 2) == 1
    masks, alive = _grid_masks_4x4(), (1 << 288) - 1
    for cell, ch in enumerate(puzzle):
        if ch != "0":
            alive &= masks[cell][int(ch)]
    return alive.bit_count() == 1


def grid_split(grid: str, test_fraction: float, split_seed: int = 0) -> str:
    """``"test"`` or ``"train"`` for a solution grid: a fixed hash of (split_seed, grid), so a grid
    belongs to one split only, whatever the sampling seed."""
    digest = hashlib.sha256(f"sudoku-split:{split_seed}:{grid}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


def make_puzzle(grid: str, size: int, blanks: int, rng: random.Random, passes: int = 20) -> str | None:
    """Blank ``blanks`` cells of ``grid`` so that the puzzle keeps exactly one solution; None when
    ``passes`` random orders all got stuck."""
    for _ in range(passes):
        cells = list(grid)
        order = list(range(size * size))
        rng.shuffle(order)
        removed = 0
        for i in order:
            if removed == blanks:
                break
            kept, cells[i] = cells[i], "0"
            if _unique("".join(cells), size):
                removed += 1
            else:
                cells[i] = kept
        if removed == blanks:
            return "".join(cells)
    return None


@dataclass(frozen=True)
class SudokuItem:
    puzzle: str
    solution: str
    size: int


def _pick_grid(size: int, split: str, rng: random.Random, pool: tuple[str, ...], test_fraction: float,
               split_seed: int) -> str:
    if size == 4:
        return rng.choice(pool)
    for _ in range(10_000):  # 9x9: draw random grids until one belongs to the split
        grid = solve("0" * 81, 9, rng)
        assert grid is not None
        if grid_split(grid, test_fraction, split_seed) == split:
            return grid
    raise DataError(f"no 9x9 grid of split {split!r} in 10000 draws; raise test_fraction ({test_fraction})")


def generate_sudoku(n: int, size: int = 4, blanks: int | tuple[int, int] = 8, seed: int = 0,
                    split: str = "train", test_fraction: float = 0.2, split_seed: int = 0) -> list[SudokuItem]:
    """``n`` distinct puzzles with one solution each, on solution grids of ``split`` only.

    ``blanks`` is a count or an inclusive (low, high) range drawn per puzzle. The same arguments
    give the same list.

    Raises:
        DataError: impossible settings (too many blanks, a split without grids, too few distinct
            puzzles), naming the setting to change.
    """
    low, high = (blanks, blanks) if isinstance(blanks, int) else blanks
    box_side(size)
    if split not in ("train", "test"):
        raise DataError(f"sudoku split {split!r} must be 'train' or 'test'")
    if not 1 <= low <= high <= MAX_BLANKS[size]:
        raise DataError(f"sudoku blanks {blanks} must lie in [1, {MAX_BLANKS[size]}] for size {size} "
                        "(a unique solution needs enough givens)")
    pool: tuple[str, ...] = ()
    if size == 4:
        pool = tuple(g for g in all_grids_4x4() if grid_split(g, test_fraction, split_seed) == split)
        if not pool:
            raise DataError(f"no 4x4 grid falls in split {split!r} with test_fraction {test_fraction}; "
                            "choose a test_fraction further from 0 and 1")
    items: list[SudokuItem] = []
    seen: set[str] = set()
    attempt = 0
    while len(items) < n:
        if attempt >= 20 * n + 1000:
            raise DataError(f"found only {len(items)} distinct {size}x{size} puzzles with {blanks} blanks in "
                            f"split {split!r}; ask for fewer (n={n}) or change blanks / test_fraction")
        rng = random.Random(f"sudoku:{size}:{split}:{seed}:{attempt}")
        attempt += 1
        grid = _pick_grid(size, split, rng, pool, test_fraction, split_seed)
        puzzle = make_puzzle(grid, size, rng.randint(low, high), rng)
        if puzzle is None or puzzle in seen:
            continue
        seen.add(puzzle)
        items.append(SudokuItem(puzzle, grid, size))
    return items
