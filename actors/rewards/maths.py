"""Math rewards: ``gsm8k``, ``math`` and ``aime``, in both profiles.

``default`` (correctness first): the answer span is found here (:func:`final_math_answer`: the last
``\\boxed{}`` inside the last ``<answer>``, else that span, else the last ``\\boxed{}`` of the text,
else the line after ``####``; different answers side by side are a hedge and score nothing), a
plain number with words around it ("$18", "18 dollars", "x = 18", "The answer is 18.") is reduced
to the number, and both sides go to math-verify wrapped in ``\\boxed{}`` (gold first). Commas,
``$``, ``\\text{}`` units, fractions, decimals and percentages are math-verify's to compare.
Numbers are compared to 15 decimals, not math-verify's 6 (:data:`EXACT_DIGITS`): a rounded decimal of
``14/3`` or ``\\pi`` is not the exact answer. math-verify's own timeouts use ``signal.alarm`` and break outside the main thread, so they are off
(``parsing_timeout=None, timeout_seconds=None``): the RewardWorker bounds time by killing the process,
and spans that are too long, too deeply bracketed or with unbalanced braces (math-verify can spend
seconds on those) are wrong without calling it.

``d1`` (the published code, quirks kept):

- gsm8k: the sum of five terms, at most 4.0: 2.0 when the stripped text after the last
  ``<answer>`` (up to ``</answer>``) equals the reference after ``####`` as strings; 0.5 when that
  text is all digits (``str.isdigit``, so Unicode digits count); 0.5 for the strict and 0.5 for the
  soft format regex, both *without* DOTALL (they fire only for one-line reasoning); and 0.125 for
  each of four tags found once, minus 0.001 per character after the closing tag.
- math / aime: 2.0 when the last ``\\boxed{}`` equals the reference under the MATH string
  normalisation (:mod:`actors.rewards.hendrycks`), plus 0.5 x (1.0 if an ``<answer>`` tag is present,
  plus 0.5, because the check for ``"\\boxed"`` is written in a non-raw string, i.e. a backspace).
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

from actors.rewards.context import RewardContext
from actors.rewards.extract import final_math_answer, layout_ok
from actors.rewards.hendrycks import is_equiv, last_boxed_only, remove_boxed
from system.types import Example, RewardResult

MAX_ANSWER_CHARS = 1000
MAX_NESTING = 6  # math-verify's time grows fast with bracket depth: 2 s at depth 8, 18 s at 30
# math-verify rounds numbers to 6 decimals before comparing, so 0.1234568 "equals" 0.1234567 and
# 4.666667 equals 14/3. The default profile compares to float precision instead: an exact gold
# needs the exact answer (or a decimal right to 15 digits). A profile that wants rounding passes it.
EXACT_DIGITS = 15


class _TimeoutsAreOurs(logging.Filter):
    """Drop math-verify's warning that its timeouts are off: the RewardWorker bounds time instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_TimeoutsAreOurs())
# A number with words around it: "$18", "18 dollars", "x = 18", "The answer is 18.", "1,000 cm".
_NUMBER_WITH_WORDS = re.compile(
    r"\s*(?:[A-Za-z][A-Za-z ,]{0,40}?(?:=|:|\bis)\s*)?(?:\\?\$\s*)?"
    r"(?P<number>-?\d[\d,]*(?:\.\d+)?)\s*(?:[A-Za-z][A-Za-z ]{0,40})?\.?\s*"
)


def nesting_depth(text: str) -> int:
    """Deepest nesting of ( [ { brackets (unbalanced closers ignored)."""
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}" and depth:
            depth -= 1
    return deepest


def braces_balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def _verify_text(span: str) -> str:
    match = _NUMBER_WITH_WORDS.fullmatch(span)
    return "\\boxed{" + (match.group("number") if match else span) + "}"


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple:
    from math_verify import parse

    return tuple(parse("\\boxed{" + gold + "}", parsing_timeout=None))


def math_verify_equal(gold: str, span: str, float_rounding: int = EXACT_DIGITS) -> tuple[bool, str]:
    """(equal, why) for a reference answer and an extracted answer span, via math-verify, numbers
    compared after rounding to ``float_rounding`` decimals (math-verify's own default is 6)."""
    from math_verify import parse, verify

    gold_parsed = list(_parse_gold(gold))
    if not gold_parsed:
        return False, f"the reference answer {gold!r} does not parse"
    pred = parse(_verify_text(span), parsing_timeout=None)
    if not pred:
        return False, f"the answer {span[:80]!r} does not parse"
    ok = verify(gold_parsed, pred, float_rounding=float_rounding, timeout_seconds=None)
    return bool(ok), ("equal to" if ok else "not equal to") + f" the reference {gold!r}"


def math_default(example: Example, completion: str, ctx: RewardContext) -> RewardResult:
    gold = str(example.reference["answer"])
    fmt = 1.0 if layout_ok(completion) else 0.0
    span, source = final_math_answer(completion)
    if span is None:
        return ctx.blend(0.0, fmt, {}, f"no answer: {source}", False)
    if len(span) > MAX_ANSWER_CHARS:
        return ctx.blend(0.0, fmt, {}, f"answer longer than {MAX_ANSWER_CHARS} characters", False)
    if nesting_depth(span) > MAX_NESTING:
        return ctx.blend(0.0, fmt, {}, f"answer brackets nested deeper than {MAX_NESTING}", False)
    if not braces_balanced(span):  # not LaTeX; math-verify can spend seconds trying
        return ctx.blend(0.0, fmt, {}, f"answer {span[:80]!r} has unbalanced braces", False)
    ok, why = math_verify_equal(gold, span)
    return ctx.blend(float(ok), fmt, {}, f"answer {span[:80]!r} (from {source}) {why}", ok)


# ----------------------------------------------------------------------------- d1 profile

_STRICT_D1 = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")  # no DOTALL: d1's bug
_SOFT_D1 = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>")  # no DOTALL: d1's bug


def d1_xml_answer(text: str) -> str:
    """d1's ``extract_xml_answer``: text after the last ``<answer>`` up to the next ``</answer>``."""
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def d1_xml_count(text: str) -> float:
    """d1's ``count_xml``: 0.125 per tag found once, minus 0.001 per trailing character (the third
    term subtracts the whole length when ``\\n</answer>\\n`` is absent; the fourth adds 0.001 when
    the text ends right at ``\\n</answer>``)."""
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125
        count -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        count += 0.125
        count -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return count


def gsm8k_d1(example: Example, completion: str, ctx: RewardContext) -> RewardResult:
    answer = d1_xml_answer(completion)
    gold = str(example.reference["answer"])
    parts = {
        "correctness": 2.0 if answer == gold else 0.0,
        "int": 0.5 if answer.isdigit() else 0.0,
        "strict_format": 0.5 if _STRICT_D1.match(completion) else 0.0,
        "soft_format": 0.5 if _SOFT_D1.match(completion) else 0.0,
        "xml_count": d1_xml_count(completion),
    }
    correct = parts["correctness"] > 0
    return RewardResult(sum(parts.values()), parts, f"d1 gsm8k: answer {answer[:80]!r} vs {gold!r}", correct)


def _d1_extract(response: str) -> str:
    try:
        return remove_boxed(last_boxed_only(response))  # type: ignore[arg-type]  # None raises, as in d1
    except Exception:  # d1 keeps the whole response when extraction fails
        return response


def _d1_boxed_in_answer(response: str) -> float:
    reward = 0.0
    if "<answer>" in response:
        response = response.split("<answer>")[1].split("</answer>")[0]
        reward += 1.0
    # d1 tests "\boxed" in a non-raw string: the backspace character, never written by a model.
    reward += 1.0 if "\x08oxed" in response else 0.5
    return reward


def math_d1(example: Example, completion: str, ctx: RewardContext) -> RewardResult:
    solution = example.reference.get("solution")
    gold = str(example.reference["answer"])
    if solution:
        try:
            gold = remove_boxed(last_boxed_only(str(solution)))  # type: ignore[arg-type]
        except Exception:  # d1 would crash on such a reference; the clean answer field stands in
            gold = str(example.reference["answer"])
    answer = _d1_extract(completion)
    parts = {
        "correctness": 2.0 if is_equiv(answer, gold) else 0.0,
        "format": 0.5 * _d1_boxed_in_answer(completion),
    }
    return RewardResult(sum(parts.values()), parts, f"d1 math: answer {answer[:80]!r} vs {gold!r}",
                        parts["correctness"] > 0)
