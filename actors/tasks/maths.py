"""Math datasets as examples, read with the public datasets' field names:

- ``gsm8k`` (openai/gsm8k): ``question``, ``answer`` (worked solution ending ``#### <number>``);
  the reference answer is the text after ``####``, as d1 takes it.
- ``math`` (MATH-500, competition math): ``problem``, and ``answer`` when present (MATH-500), else
  the content of the last ``\\boxed{}`` of ``solution`` (competition math).
- ``aime`` (AIME 2024/2025 sets): ``problem`` / ``Problem`` / ``question``, ``answer`` / ``Answer``.

Ids come from ``unique_id`` / ``id`` / ``ID`` when present, else ``<file stem>-<row>``.
"""

from __future__ import annotations

from pathlib import Path

from actors.rewards.extract import boxed_contents
from actors.tasks.loading import Row
from system.types import Example


def row_id(row: Row, *names: str) -> str:
    given = row.optional_text(*names) if names else None
    return given.strip() if given and given.strip() else f"{Path(row.source).stem}-{row.number}"


def gsm8k_example(row: Row) -> Example:
    question = row.text("question")
    solution = row.text("answer")
    if "####" not in solution:
        raise row.fail("answer", "has no '####' before the final answer (the GSM8K format)")
    answer = solution.split("####")[1].strip()
    if not answer:
        raise row.fail("answer", "nothing after '####'")
    return Example("gsm8k", row_id(row, "id"), question, {"answer": answer, "solution": solution})


def _competition_example(task: str, row: Row) -> Example:
    problem = row.text("problem", "Problem", "question")
    solution = row.optional_text("solution", "Solution")
    if row.has("answer", "Answer"):
        answer = row.text("answer", "Answer").strip()
    elif solution is not None:
        boxes = boxed_contents(solution)
        if not boxes or not boxes[-1].strip():
            raise row.fail("solution", "has no \\boxed{} answer, and the row has no 'answer' field")
        answer = boxes[-1].strip()
    else:
        raise row.fail("answer", f"missing, and no 'solution' to take it from (the row has {sorted(row.data)})")
    reference = {"answer": answer} | ({"solution": solution} if solution else {})
    return Example(task, row_id(row, "unique_id", "id", "ID"), problem, reference)


def math_example(row: Row) -> Example:
    return _competition_example("math", row)


def aime_example(row: Row) -> Example:
    return _competition_example("aime", row)
