"""Seeded Countdown puzzles: a list of numbers and a target reachable with + - * / using each number
exactly once; one solution is recorded (others may exist: the reward checks any answer on its own).

Construction, per item: draw the numbers, then merge two random items of the pool with a random
operator until one expression is left; its value is the target. With ``integer_steps`` (the default,
as in Countdown-Tasks-3to4) every intermediate value must be a positive integer, so division is
exact and nothing goes negative. A draw whose target falls outside [min_target, max_target] is
redrawn. Item i depends only on (seed, i) and the spec.

Difficulty knobs: how many numbers, their range, the target range, the operator set, and whether
intermediate values must be positive integers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction

from system.errors import DataError

OPERATORS = "+-*/"


@dataclass(frozen=True)
class CountdownSpec:
    """What puzzles to draw (see the module docstring)."""

    num_numbers: int = 3
    min_number: int = 1
    max_number: int = 99
    min_target: int = 1
    max_target: int = 100
    ops: str = OPERATORS
    integer_steps: bool = True

    def check(self) -> None:
        problems = []
        if not 2 <= self.num_numbers <= 6:
            problems.append(f"num_numbers {self.num_numbers} must be in [2, 6]")
        if not 0 <= self.min_number <= self.max_number <= 10**6:
            problems.append(f"numbers range [{self.min_number}, {self.max_number}] must satisfy 0 <= min <= max <= 1e6")
        if self.min_target > self.max_target:
            problems.append(f"target range [{self.min_target}, {self.max_target}] is empty")
        if not self.ops or set(self.ops) - set(OPERATORS):
            problems.append(f"ops {self.ops!r} must be a non-empty subset of {OPERATORS!r}")
        if problems:
            raise DataError("countdown generator: " + "; ".join(problems))


@dataclass(frozen=True)
class CountdownItem:
    numbers: list[int]
    target: int
    solution: str


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return None if b == 0 else a / b


def _draw(rng: random.Random, spec: CountdownSpec) -> CountdownItem | None:
    numbers = [rng.randint(spec.min_number, spec.max_number) for _ in range(spec.num_numbers)]
    pool: list[tuple[str, Fraction, bool]] = [(str(n), Fraction(n), True) for n in numbers]
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        (sa, va, leaf_a), (sb, vb, leaf_b) = pool[i], pool[j]
        ops = list(spec.ops)
        rng.shuffle(ops)
        for op in ops:
            value = _apply(op, va, vb)
            if value is None or (spec.integer_steps and (value.denominator != 1 or value <= 0)):
                continue
            text = f"{sa if leaf_a else f'({sa})'} {op} {sb if leaf_b else f'({sb})'}"
            pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(text, value, False)]
            break
        else:
            return None
    _, value, _ = pool[0]
    if value.denominator != 1 or not spec.min_target <= value <= spec.max_target:
        return None
    return CountdownItem(numbers, int(value), pool[0][0])


def generate_countdown(n: int, spec: CountdownSpec | None = None, seed: int | str = 0) -> list[CountdownItem]:
    """``n`` puzzles; item i depends only on (seed, i, spec).

    Raises:
        DataError: the spec is invalid, or no reachable target turned up for an item in 10000 draws.
    """
    spec = spec or CountdownSpec()
    spec.check()
    items = []
    for i in range(n):
        rng = random.Random(f"countdown:{seed}:{i}")
        for _ in range(10_000):
            item = _draw(rng, spec)
            if item is not None:
                items.append(item)
                break
        else:
            raise DataError(f"countdown generator: no target in [{spec.min_target}, {spec.max_target}] reachable "
                            f"in 10000 draws with {spec}; widen the target range or the operators")
    return items
