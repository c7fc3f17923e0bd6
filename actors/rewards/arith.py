"""A safe parser and evaluator for the arithmetic expressions of Countdown answers (untrusted text).

Never ``eval``: the text is split into tokens by hand, turned into reverse Polish notation by the
shunting-yard algorithm (no recursion, so nesting cannot overflow the stack), and evaluated on a
stack. Length, token count and parenthesis depth are bounded before any arithmetic runs.

Two dialects:

- ``STRICT`` (``default`` profile): ASCII integers without leading zeros, binary ``+ - * /`` and
  parentheses; no unary signs, no decimals, no ``**`` or ``//``. Exact rational arithmetic
  (``Fraction``); division by zero is an error.
- ``PYTHON`` (``d1`` profile): what d1's ``eval`` accepted after its character filter
  ``^[\\d+\\-*/().\\s]+$``: Python's literal rules (``007`` is a syntax error, ``007.5`` is not),
  decimals, unary ``+ -``, ``**`` (right-associative, binding tighter than a unary minus on its left)
  and ``//``, with Python's int / float / complex semantics, so values match ``eval`` bit for bit.
  Departure: a power whose result would exceed :data:`MAX_POWER_BITS` bits, or a product beyond
  :data:`MAX_PRODUCT_BITS`, is an error (``eval`` would compute for minutes: ``9**9**9``); in d1 such
  an answer can only score the format reward anyway, since the target is small.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from fractions import Fraction

MAX_POWER_BITS = 1 << 20
MAX_PRODUCT_BITS = 1 << 22


class ArithError(ValueError):
    """The expression is not valid in the dialect, or cannot be evaluated (the message says why)."""


@dataclass(frozen=True)
class Dialect:
    name: str
    python: bool  # Python literal rules, unary signs, decimals, ** and //, Python numeric semantics
    max_chars: int
    max_tokens: int
    max_depth: int


STRICT = Dialect("strict", python=False, max_chars=512, max_tokens=256, max_depth=32)
PYTHON = Dialect("python", python=True, max_chars=4096, max_tokens=2048, max_depth=100)

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "u+": 3, "u-": 3, "**": 4}
_SPACES_STRICT = " \t\n\r"
_SPACES_PYTHON = " \t\f"  # newlines only inside parentheses (Python's implicit line joining)


def _number(text: str, i: int, dialect: Dialect) -> tuple[str, int]:
    j = i
    while j < len(text) and text[j] in "0123456789":
        j += 1
    if dialect.python and j < len(text) and text[j] == ".":
        j += 1
        while j < len(text) and text[j] in "0123456789":
            j += 1
    literal = text[i:j]
    if literal == ".":
        raise ArithError(f"a lone '.' at position {i}")
    if "." not in literal and len(literal) > 1 and literal[0] == "0" and literal.strip("0"):
        raise ArithError(f"leading zero in {literal!r}")
    return literal, j


def tokenize(text: str, dialect: Dialect) -> list[str]:
    """Number literals, operators and parentheses of ``text`` in the ``dialect``."""
    if len(text) > dialect.max_chars:
        raise ArithError(f"expression longer than {dialect.max_chars} characters")
    tokens: list[str] = []
    depth = i = 0
    while i < len(text):
        ch = text[i]
        if ch in (_SPACES_PYTHON if dialect.python else _SPACES_STRICT):
            i += 1
        elif dialect.python and ch in "\n\r":
            if depth == 0:
                raise ArithError("a line break outside parentheses")
            i += 1
        elif ch in "0123456789" or (dialect.python and ch == "."):
            literal, i = _number(text, i, dialect)
            tokens.append(literal)
        elif dialect.python and text.startswith(("**", "//"), i):
            tokens.append(text[i:i + 2])
            i += 2
        elif ch in "+-*/()":
            depth += {"(": 1, ")": -1}.get(ch, 0)
            tokens.append(ch)
            i += 1
        else:
            raise ArithError(f"character {ch!r} at position {i} is not allowed")
        if len(tokens) > dialect.max_tokens:
            raise ArithError(f"more than {dialect.max_tokens} tokens")
    if not tokens:
        raise ArithError("empty expression")
    return tokens


def _pops_before(top: str, op: str) -> bool:
    """Shunting-yard: does operator ``top`` on the stack apply before the incoming binary ``op``?"""
    if top == "(":
        return False
    if op == "**":  # right-associative; a unary sign on its left binds looser (-2**2 == -4)
        return _PRECEDENCE[top] > _PRECEDENCE[op]
    return _PRECEDENCE[top] >= _PRECEDENCE[op]


def to_rpn(tokens: list[str], dialect: Dialect) -> list[str]:
    """Reverse Polish notation of the token list; unary signs become ``u+`` / ``u-``."""
    out: list[str] = []
    stack: list[str] = []
    expect_operand, depth = True, 0
    for tok in tokens:
        if tok[0].isdigit() or tok[0] == ".":
            if not expect_operand:
                raise ArithError(f"missing operator before {tok!r}")
            out.append(tok)
            expect_operand = False
        elif tok == "(":
            if not expect_operand:
                raise ArithError("'(' right after an operand")
            depth += 1
            if depth > dialect.max_depth:
                raise ArithError(f"parentheses nested deeper than {dialect.max_depth}")
            stack.append(tok)
        elif tok == ")":
            if expect_operand:
                raise ArithError("')' where an operand is expected")
            while stack and stack[-1] != "(":
                out.append(stack.pop())
            if not stack:
                raise ArithError("unbalanced ')'")
            stack.pop()
            depth -= 1
        elif expect_operand:
            if not (dialect.python and tok in "+-"):
                raise ArithError(f"operator {tok!r} where an operand is expected")
            stack.append("u" + tok)
        else:
            while stack and _pops_before(stack[-1], tok):
                out.append(stack.pop())
            stack.append(tok)
            expect_operand = True
    if expect_operand:
        raise ArithError("the expression ends with an operator")
    if "(" in stack:
        raise ArithError("unbalanced '('")
    return out + stack[::-1]


def literals(rpn: list[str]) -> list[str]:
    return [tok for tok in rpn if tok[0].isdigit() or tok[0] == "."]


def _python_binary(op: str, a, b):  # noqa: ANN001, ANN202 - Python numbers of any kind
    ints = isinstance(a, int) and isinstance(b, int)
    if op == "**" and ints and b > 0 and abs(a) > 1 and b * a.bit_length() > MAX_POWER_BITS:
        raise ArithError(f"power with more than {MAX_POWER_BITS} bits")
    if op == "*" and ints and a.bit_length() + b.bit_length() > MAX_PRODUCT_BITS:
        raise ArithError(f"product with more than {MAX_PRODUCT_BITS} bits")
    fn = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
          "//": operator.floordiv, "**": operator.pow}[op]
    return fn(a, b)


def evaluate(rpn: list[str], dialect: Dialect):  # noqa: ANN201 - Fraction (strict) or int/float/complex
    """Value of an RPN expression: a ``Fraction`` in ``STRICT``; Python's own int / float / complex
    result in ``PYTHON``. Raises ArithError for division by zero, overflow and size bounds."""
    stack: list = []
    try:
        for tok in rpn:
            if tok[0].isdigit() or tok[0] == ".":
                if dialect.python:
                    stack.append(float(tok) if "." in tok else int(tok))
                else:
                    stack.append(Fraction(int(tok)))
            elif tok in ("u+", "u-"):
                stack.append(-stack.pop() if tok == "u-" else +stack.pop())
            else:
                b, a = stack.pop(), stack.pop()
                if dialect.python:
                    stack.append(_python_binary(tok, a, b))
                elif tok == "/" and b == 0:
                    raise ArithError("division by zero")
                else:
                    stack.append({"+": operator.add, "-": operator.sub, "*": operator.mul,
                                  "/": operator.truediv}[tok](a, b))
    except (ZeroDivisionError, OverflowError, TypeError, ValueError) as e:
        if isinstance(e, ArithError):
            raise
        raise ArithError(f"{type(e).__name__}: {e}") from None
    assert len(stack) == 1, "to_rpn produced an unbalanced expression"
    return stack[0]


def parse(text: str, dialect: Dialect) -> list[str]:
    """Tokens of ``text`` in RPN; raises ArithError when it is not a valid expression."""
    return to_rpn(tokenize(text, dialect), dialect)
