"""Imperfect demonstrations: SFT data written by a careless annotator, the start RL improves past.

Real demonstration data is never all correct; SFT imitates its errors along with the rest, while RL
with an exact verifier is paid only for correct answers. ``sft.wrong_demos`` (a fraction) and
``sft.wrong_demo_kind`` corrupt that share of the *training* demonstrations (the test split and every
reward keep the true solutions; which demonstrations are wrong is a seeded function of the example id,
the same for every SFT seed):

- ``shift``: the annotator writes every blank cell of a sudoku one digit too high (d -> d mod n + 1;
  the givens are copied right): a consistent convention, so the SFT policy learns a mixture of two
  answer modes and, when wrong demos are the majority, decodes the wrong one greedily;
- ``random``: every blank cell gets a uniformly drawn other digit (unsystematic noise);
- ``blank``: the annotator hands the puzzle back unsolved (every blank cell left '0'): the SFT policy
  learns to leave a cell blank where it is unsure, which greedy decoding then does wherever the
  share of such demonstrations outweighs its confidence in a digit.

Only sudoku has corruptible demonstrations so far (its blanks are the cells the reward scores).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from typing import Literal

from system.errors import ConfigError
from system.types import Example

WrongDemoKind = Literal["shift", "random", "blank"]


def _chosen(example_id: str, fraction: float) -> bool:
    digest = hashlib.blake2b(f"wrong-demo:{example_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def corrupt_solution(puzzle: str, solution: str, size: int, kind: WrongDemoKind, rng: random.Random) -> str:
    """The annotator's answer: ``solution`` with every blank cell of ``puzzle`` ('0') rewritten."""
    cells = []
    for given, digit in zip(puzzle, solution):
        if given != "0":
            cells.append(digit)
        elif kind == "blank":
            cells.append("0")
        elif kind == "shift":
            cells.append(str(int(digit) % size + 1))
        else:
            cells.append(rng.choice([str(d) for d in range(1, size + 1) if str(d) != digit]))
    return "".join(cells)


def wrong_demonstrations(examples: list[Example], fraction: float, kind: WrongDemoKind) -> list[Example]:
    """``examples`` with ``fraction`` of them (by id) given a wrong ``reference['solution']`` to imitate.

    Raises:
        ConfigError: a task other than sudoku with ``fraction`` > 0.
    """
    if fraction <= 0:
        return examples
    out = []
    for ex in examples:
        if ex.task != "sudoku":
            raise ConfigError(f"sft.wrong_demos ({fraction}) needs sudoku demonstrations, got task {ex.task!r}; "
                              "set sft.wrong_demos=0")
        if not _chosen(ex.id, fraction):
            out.append(ex)
            continue
        ref = ex.reference
        rng = random.Random(f"wrong-demo-digits:{ex.id}")
        wrong = corrupt_solution(ref["puzzle"], ref["solution"], int(ref["size"]), kind, rng)
        out.append(replace(ex, reference={**ref, "solution": wrong, "true_solution": ref["solution"]}))
    return out
