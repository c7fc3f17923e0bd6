"""Countdown rewards: does the expression in the last ``<answer>`` use each given number exactly once
and reach the target (``default``: exactly, as a fraction; ``d1``: within 1e-5)? Expressions are parsed by :mod:`actors.rewards.arith`, never
evaluated as Python.

``default``: the ``STRICT`` dialect (integers, binary + - * /, parentheses), exact rational
arithmetic compared exactly with the target (``99 + 1 + 1/200000`` is not 100; d1's 1e-5 tolerance
would accept it); an optional trailing ``= <target>`` is accepted. Different answer spans side by side are
a hedge and score nothing. score = (1 - w) * correct + w * layout.

``d1`` (the published code): no ``<answer>`` -> 0.0; otherwise 0.1 unless the integers found by
``\\d+`` (Unicode digits included), sorted, equal the sorted numbers, the text passes the character
filter ``^[\\d+\\-*/().\\s]+$`` and evaluates (Python semantics: ``**``, ``//``, decimals and unary
signs all allowed) within 1e-5 of the target -> 1.0. So any ``<answer>`` tag, even an empty one,
earns 0.1.
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

from actors.rewards.arith import PYTHON, STRICT, ArithError, evaluate, literals, parse
from actors.rewards.context import RewardContext
from actors.rewards.extract import last_answer, layout_ok
from system.types import Example, RewardResult

TOLERANCE = 1e-5  # d1 only


def _strip_target(expression: str, target: int) -> str:
    """``expr = target`` -> ``expr`` (the right side must be the target itself)."""
    if expression.count("=") != 1:
        return expression
    left, right = expression.split("=")
    return left if right.strip() == str(target) else expression


def countdown_default(example: Example, completion: str, ctx: RewardContext) -> RewardResult:
    numbers = [int(n) for n in example.reference["numbers"]]
    target = int(example.reference["target"])
    fmt = 1.0 if layout_ok(completion) else 0.0
    expression, why = last_answer(completion)
    if expression is None:
        return ctx.blend(0.0, fmt, {"valid": 0.0}, why, False)
    try:
        rpn = parse(_strip_target(expression, target), STRICT)
    except ArithError as e:
        return ctx.blend(0.0, fmt, {"valid": 0.0}, f"not a valid expression: {e}", False)
    used = Counter(int(tok) for tok in literals(rpn))
    if used != Counter(numbers):
        return ctx.blend(0.0, fmt, {"valid": 0.0},
                         f"uses {sorted(used.elements())}, not each of {sorted(numbers)} exactly once", False)
    try:
        value = evaluate(rpn, STRICT)
    except ArithError as e:
        return ctx.blend(0.0, fmt, {"valid": 0.0}, f"cannot evaluate: {e}", False)
    ok = value == Fraction(target)
    return ctx.blend(float(ok), fmt, {"valid": 1.0},
                     f"{expression!r} = {value} {'==' if ok else '!='} {target}", ok)


_D1_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_D1_ALLOWED = re.compile(r"^[\d+\-*/().\s]+$")  # Unicode \d and \s, as in d1


def _d1_numbers_ok(equation: str, numbers: list[int]) -> bool:
    try:
        return sorted(int(n) for n in re.findall(r"\d+", equation)) == sorted(numbers)
    except ValueError:  # e.g. more digits than int() converts; d1 returns False
        return False


def countdown_d1(example: Example, completion: str, ctx: RewardContext) -> RewardResult:
    numbers = [int(n) for n in example.reference["numbers"]]
    target = int(example.reference["target"])
    matches = _D1_ANSWER.findall(completion)
    if not matches:
        return RewardResult(0.0, {"answer_tag": 0.0}, "d1 countdown: no <answer>...</answer>", False)
    equation = matches[-1].strip()
    parts = {"answer_tag": 1.0, "numbers_ok": 0.0}
    if not _d1_numbers_ok(equation, numbers):
        return RewardResult(0.1, parts, f"d1 countdown: {equation[:80]!r} does not use {sorted(numbers)}", False)
    parts["numbers_ok"] = 1.0
    if not _D1_ALLOWED.match(equation):
        return RewardResult(0.1, parts, "d1 countdown: characters outside d1's filter", False)
    try:
        value = evaluate(parse(equation, PYTHON), PYTHON)
        ok = abs(value - target) < TOLERANCE
    except (ArithError, TypeError) as e:
        return RewardResult(0.1, parts, f"d1 countdown: does not evaluate ({e})", False)
    score = 1.0 if ok else 0.1
    return RewardResult(score, parts, f"d1 countdown: {equation[:80]!r} = {value!r} vs {target}", ok)
