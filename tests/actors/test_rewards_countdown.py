"""Countdown rewards and the safe arithmetic parser: correct, wrong, malformed and adversarial
answers in both profiles, d1's published values (0.1 for any answer tag), and Python-exact values
of the d1 dialect."""

from __future__ import annotations

from fractions import Fraction

import pytest

from actors.rewards import RewardContext, score
from actors.rewards.arith import PYTHON, STRICT, ArithError, evaluate, parse
from system.types import Example

DEFAULT, D1 = RewardContext("default"), RewardContext("d1")


def puzzle(numbers, target):
    return Example("countdown", "c", "q", {"numbers": numbers, "target": target})


P = puzzle([3, 5, 7], 22)


def wrap(expression: str) -> str:
    return f"<reasoning>\nTry products.\n</reasoning>\n<answer>\n{expression}\n</answer>\n"


def test_default_correct_wrong_and_invalid():
    assert score(P, wrap("3*5+7"), DEFAULT).score == pytest.approx(1.0)  # 0.9 * 1 + 0.1 * layout 1
    assert score(P, wrap("(7 + 5*3)"), DEFAULT).correct
    assert score(P, wrap("3*5+7 = 22"), DEFAULT).correct  # a trailing "= target" is accepted
    wrong = score(P, wrap("3+5+7"), DEFAULT)
    assert not wrong.correct and wrong.score == pytest.approx(0.1) and wrong.components["valid"] == 1.0
    assert "'3+5+7' = 15 != 22" in wrong.reason
    assert score(P, "<answer>3*5+7</answer>", DEFAULT).score == pytest.approx(0.9)  # right, no reasoning tags
    for expression, why in [("3*5+7 = 23", "not allowed"), ("3*5", "uses [3, 5], not each of [3, 5, 7]"),
                            ("3*5+7+7", "uses [3, 5, 7, 7]"), ("3*5+7+0", "uses [0, 3, 5, 7]"),
                            ("", "empty expression"), ("22", "uses [22]")]:
        result = score(P, wrap(expression), DEFAULT)
        assert result.components["correctness"] == 0.0 and why in result.reason, (expression, result.reason)


def test_default_exact_rational_arithmetic():
    assert score(puzzle([1, 3, 3], 1), wrap("1/3*3"), DEFAULT).correct  # exactly 1, not 0.999...
    assert score(puzzle([6, 4, 3], 8), wrap("6/3*4"), DEFAULT).correct
    assert "division by zero" in score(puzzle([3, 3, 7], 7), wrap("7/(3-3)"), DEFAULT).reason
    assert evaluate(parse("10/4", STRICT), STRICT) == Fraction(5, 2)


@pytest.mark.parametrize("expression", ["3**5+7", "-3*5+7", "3.0*5+7", "3*5//1+7", "٣*٥+٧", "03*5+7",
                                        "(" * 40 + "3*5+7" + ")" * 40, "9" * 600, "3*5+7; import os",
                                        "__import__('os')", "3*5+7\x00", "3 5 7", "(3*5)(7)"])
def test_default_rejects_what_the_strict_grammar_does_not_allow(expression):
    result = score(P, wrap(expression), DEFAULT)
    assert result.components["correctness"] == 0.0 and result.components["valid"] == 0.0


def test_hedges_answer_only_in_reasoning_and_tags():
    hedge = wrap("3+5+7") + wrap("3*5+7")
    assert not score(P, hedge, DEFAULT).correct  # two different answers: a hedge scores nothing
    assert score(P, hedge, D1).score == 1.0  # d1 takes the last one
    assert score(P, wrap("3*5+7") + wrap("3*5+7"), DEFAULT).score == pytest.approx(0.9)  # same twice: layout 0
    only_reasoning = "<reasoning>\n3*5+7 = 22\n</reasoning>\n"
    assert score(P, only_reasoning, DEFAULT).score == 0.0 and score(P, only_reasoning, D1).score == 0.0


def test_d1_published_values():
    assert score(P, wrap("3*5+7"), D1).score == 1.0
    assert score(P, wrap("3+5+7"), D1).score == 0.1  # valid numbers, wrong value: the format score
    assert score(P, "<answer></answer>", D1).score == 0.1  # any answer tag, even empty, earns 0.1
    assert score(P, "<answer>hello</answer>", D1).score == 0.1
    assert score(P, "3*5+7", D1).score == 0.0  # no answer tag
    assert score(P, "<answer>3*5+7=22</answer>", D1).score == 0.1  # 22 counts as a number
    assert score(P, "<answer>\n3*5\n+7\n</answer>", D1).score == 0.1  # a line break outside parentheses
    assert score(P, "<answer>(3*5\n+7)</answer>", D1).score == 1.0  # inside parentheses: fine in Python


def test_d1_accepts_python_operators_and_decimals():
    # d1's character filter lets **, // and decimals through, and eval computes them.
    assert score(puzzle([2, 3, 1], 8), wrap("2**3*1"), D1).score == 1.0
    assert score(puzzle([2, 3, 1], 8), wrap("2**3*1"), DEFAULT).components["correctness"] == 0.0
    assert score(puzzle([7, 2, 1], 3), wrap("7//2*1"), D1).score == 1.0
    assert score(puzzle([1, 5, 2], 3), wrap("1.5*2"), D1).score == 1.0  # \d+ sees 1, 5 and 2
    assert score(puzzle([3, 5, 7], -22), wrap("-(3*5+7)"), D1).score == 1.0


def test_d1_adversarial():
    # Unicode digits pass d1's \d+ check and filter but not Python's tokenizer: 0.1.
    assert score(P, wrap("٣*٥+٧"), D1).score == 0.1
    # An exponent bomb: eval would run for minutes; here it is refused -> 0.1, as any failed eval.
    bomb = score(puzzle([9, 9, 9], 1), wrap("9**9**9"), D1)
    assert bomb.score == 0.1 and "more than" in bomb.reason
    # Deep nesting: Python's parser stops at 200 levels, this one at 100: 0.1 either way.
    assert score(P, wrap("(" * 150 + "3*5+7" + ")" * 150), D1).score == 0.1
    assert score(P, wrap("(" * 50 + "3*5+7" + ")" * 50), D1).score == 1.0
    huge = "9" * 5000  # more digits than int() converts: d1's validate_equation returns False
    assert score(puzzle([9], 9), wrap(huge), D1).score == 0.1
    assert score(P, wrap("3*5+7 or __import__('os')"), D1).score == 0.1
    assert score(P, wrap("(3*5)(7)"), D1).score == 0.1  # "call an int": a TypeError in eval


@pytest.mark.parametrize("text, value", [
    ("-2**2", -4), ("2**-1", 0.5), ("2**3**2", 512), ("2--3", 5), ("-2**-2", -0.25), ("+-+2", -2),
    ("7.5//2", 3.0), ("1/3+1/3", 2 / 3), ("00+1", 1), ("012.5*2", 25.0), (".5+5.", 5.5), ("2*-3**2", -18),
    ("100/7*7", 100.0), ("4//3*3", 3), ("2-3-4", -5), ("(2\n+3)", 5),
])
def test_python_dialect_matches_python_semantics(text, value):
    # Expected values are Python's own (hand-checked): ** binds tighter than a unary minus on its left,
    # is right-associative, and true division gives floats.
    result = evaluate(parse(text, PYTHON), PYTHON)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize("text, dialect, message", [
    ("007", PYTHON, "leading zero"), ("2 3", PYTHON, "missing operator"), ("()", PYTHON, "operand is expected"),
    ("2(3)", PYTHON, "right after an operand"), ("2+", PYTHON, "ends with an operator"),
    ("1..5", PYTHON, "missing operator"), ("2\n+3", PYTHON, "line break"), ("9**9**9", PYTHON, "more than"),
    ("1e5", PYTHON, "'e'"), ("2***3", PYTHON, "operand is expected"), ("(1", PYTHON, r"unbalanced '\('"),
    ("1)", PYTHON, r"unbalanced '\)'"), ("1/0", PYTHON, "ZeroDivisionError"), ("-1+2", STRICT, "operand is expected"),
    ("2**3", STRICT, "operand is expected"), ("1.5", STRICT, "'.'"), ("07", STRICT, "leading zero"),
    ("(" * 33 + "1" + ")" * 33, STRICT, "deeper than 32"), ("1+" * 200 + "1", STRICT, "more than 256 tokens"),
    ("1" * 513, STRICT, "longer than 512"),
])
def test_parser_errors(text, dialect, message):
    with pytest.raises(ArithError, match=message):
        evaluate(parse(text, dialect), dialect)


def test_default_is_exact_where_d1_has_a_tolerance():
    near = puzzle([99, 1, 1, 200000], 100)
    expression = "99 + 1 + 1/200000"  # 100.000005: within d1's 1e-5, not the target
    assert not score(near, wrap(expression)).correct
    assert score(near, wrap(expression), RewardContext("d1")).correct
    assert score(near, wrap("99 + 1 * 1 + 0 * 200000")).score < 0.5  # 0 is not a given number
