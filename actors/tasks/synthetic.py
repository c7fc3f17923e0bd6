"""Tiny synthetic tasks that the built-in model can learn on a CPU in minutes: ``copy`` (repeat a digit
string) and ``add`` (sum of two small numbers). Seeded and reproducible. They serve SFT (as
`TextExample`s) and RL (as registered tasks whose prompt is the plain text, no format instructions,
scored by ``actors.rewards.synthetic``)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from system.types import Example

if TYPE_CHECKING:
    from actors.tasks.loading import Row


@dataclass(frozen=True)
class TextExample:
    """One supervised example: the user prompt and the target completion (the answer)."""

    id: str
    prompt: str
    completion: str


def _copy(rng: random.Random, i: int) -> TextExample:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 6)))
    return TextExample(f"copy-{i}", f"copy {digits}", digits)


def _add(rng: random.Random, i: int) -> TextExample:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return TextExample(f"add-{i}", f"{a}+{b}=", str(a + b))


GENERATORS = {"copy": _copy, "add": _add}


def generate(task: str, n: int, seed: int) -> list[TextExample]:
    """``n`` examples of ``task``; item i depends only on (seed, i)."""
    if task not in GENERATORS:
        raise ValueError(f"unknown synthetic task {task!r}; known: {sorted(GENERATORS)}")
    return [GENERATORS[task](random.Random(f"{task}:{seed}:{i}"), i) for i in range(n)]


def train_test(task: str, num_train: int, num_test: int, seed: int) -> tuple[list[TextExample], list[TextExample]]:
    """Disjoint train and test sets: test prompts never appear in train."""
    pool = generate(task, num_train + num_test * 3, seed)
    test, seen = [], set()
    for ex in pool[num_train:]:
        if ex.prompt not in seen and len(test) < num_test:
            test.append(ex)
            seen.add(ex.prompt)
    train = [ex for ex in pool[:num_train] if ex.prompt not in seen]
    return train, test


def as_examples(items: list[TextExample], task: str) -> list[Example]:
    """The RL form: the answer becomes the reference the ``copy`` / ``add`` reward checks."""
    return [Example(task, item.id, item.prompt, {"answer": item.completion}) for item in items]


def synthetic_row(row: Row, task: str) -> Example:
    """A JSONL row ``{"prompt", "answer"}`` (``completion`` also accepted) of a synthetic task."""
    return Example(task, str(row.data.get("id", row.number)), row.text("prompt"),
                   {"answer": row.text("answer", "completion")})
