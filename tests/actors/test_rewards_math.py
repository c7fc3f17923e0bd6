"""Math rewards: the default profile through math-verify (commas, $, units, fractions, decimals,
hedges, malformed and adversarial answers) and the d1 profile's published values, quirks included."""

from __future__ import annotations

import pytest

from actors.rewards import RewardContext, score
from actors.rewards.extract import boxed_contents, final_math_answer, layout_ok
from actors.rewards.hendrycks import is_equiv, last_boxed_only, remove_boxed, strip_answer
from actors.rewards.maths import d1_xml_count
from system.types import Example

DEFAULT, D1 = RewardContext("default"), RewardContext("d1")
GSM = Example("gsm8k", "g", "q", {"answer": "72", "solution": "... #### 72"})


def wrap(answer: str, reasoning: str = "Add them.") -> str:
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>\n"


@pytest.mark.parametrize("answer", ["72", "$72", "\\$72", "72 dollars", "72.0", "72.00", "The answer is 72.",
                                    "x = 72", "\\boxed{72}", "\\boxed{72 \\text{ dollars}}", "72 cm", "144/2"])
def test_default_accepts_equivalent_forms(answer):
    result = score(GSM, wrap(answer), DEFAULT)
    assert result.correct and result.score == pytest.approx(1.0)  # 0.9 * 1 + 0.1 * 1 (layout ok)
    assert result.components == {"correctness": 1.0, "format": 1.0}


@pytest.mark.parametrize("gold, answer", [("1000", "1,000"), ("1,000", "1000"), ("\\frac{3}{4}", "0.75"),
                                          ("0.75", "\\frac{3}{4}"), ("0.5", "1/2"), ("-3", "\\boxed{-3}"),
                                          ("6 - 5i", "6-5i"), ("3\\sqrt{13}", "\\boxed{3\\sqrt{13}}")])
def test_default_commas_fractions_decimals_latex(gold, answer):
    ex = Example("math", "m", "q", {"answer": gold})
    assert score(ex, wrap(answer), DEFAULT).correct


@pytest.mark.parametrize("gold, answer", [("6 - 5i", "5"), ("3\\sqrt{13}", "3"), ("72", "71"), ("72", "-72"),
                                          ("1,-2", "1")])
def test_default_rejects_wrong_answers_math_verify_would_take_from_raw_gold(gold, answer):
    # Raw gold "6 - 5i" would parse as 5 and "3\\sqrt{13}" as 3: the gold is wrapped in \boxed{} first.
    ex = Example("math", "m", "q", {"answer": gold})
    result = score(ex, wrap(answer), DEFAULT)
    assert not result.correct and result.score == pytest.approx(0.1)  # 0.9 * 0 + 0.1 * 1


@pytest.mark.parametrize("completion, why", [
    ("<reasoning>\nIt is 72.\n</reasoning>\n<answer>\n\n</answer>", "empty <answer>"),  # answer only in reasoning
    ("<reasoning>The total is 72</reasoning>", "no <answer> span"),
    (wrap("71") + wrap("72"), "2 different <answer> spans"),  # a hedge over two tags
    (wrap("\\boxed{71} or \\boxed{72}"), "2 different \\boxed{} answers"),  # a hedge over two boxes
    ("", "no <answer> span"),
])
def test_default_no_answer_or_hedge(completion, why):
    result = score(GSM, completion, DEFAULT)
    assert not result.correct and result.components["correctness"] == 0.0 and why in result.reason


def test_default_same_answer_twice_is_correct_but_badly_laid_out():
    result = score(GSM, wrap("72") + wrap("72"), DEFAULT)
    assert result.correct and result.score == pytest.approx(0.9)  # 0.9 * 1 + 0.1 * 0 (two answer tags)


@pytest.mark.parametrize("answer", ["17 or 72", "72 apples and 3 pears", "١٧٢", "9" * 900, "9**9**9",
                                    "(" * 300 + "72" + ")" * 300, "\\boxed{", "}{}\\frac", "\x00\x01", "\ud800"])
def test_default_adversarial_answers_are_wrong_and_do_not_raise(answer):
    result = score(GSM, wrap(answer), DEFAULT)
    assert not result.correct and result.components["correctness"] == 0.0


def test_default_bounds_bracket_nesting_before_math_verify():
    assert score(GSM, wrap("((72))"), DEFAULT).correct
    deep = score(GSM, wrap("(" * 7 + "72" + ")" * 7), DEFAULT)  # math-verify would take seconds
    assert not deep.correct and "nested deeper than 6" in deep.reason
    unbalanced = score(GSM, wrap("\\boxed{72"), DEFAULT)  # math-verify spent 2 s on such text
    assert not unbalanced.correct and "unbalanced braces" in unbalanced.reason


def test_default_other_sources_and_limits():
    assert score(GSM, "Some work.\n#### 72", DEFAULT).correct  # no tags: the #### line
    assert score(GSM, "So \\boxed{72}.", DEFAULT).score == pytest.approx(0.9)  # correct, no layout
    too_long = score(GSM, wrap("7" * 1001), DEFAULT)
    assert "longer than 1000" in too_long.reason
    huge = score(GSM, "x" * 100_001, DEFAULT)
    assert huge.score == 0.0 and "longer than 100000" in huge.reason
    multi = wrap("72", reasoning="Line one.\nLine two.\nLine three.")
    assert score(GSM, multi, DEFAULT).score == pytest.approx(1.0)  # multi-line reasoning is fine here
    prefilled = "Add them.\n</reasoning>\n<answer>\n72\n</answer>"  # <reasoning> was in the prompt
    assert layout_ok(prefilled) and score(GSM, prefilled, DEFAULT).score == pytest.approx(1.0)
    assert RewardContext("default", format_weight=0.0) and score(GSM, "#### 72", RewardContext(format_weight=0.0)).score == 1.0


def test_extraction_helpers():
    assert boxed_contents("a \\boxed{1} b \\boxed {\\frac{1}{2}} \\fbox{x} \\boxed{\\boxed{3}} \\boxed{") == [
        "1", "\\frac{1}{2}", "x", "\\boxed{3}"]
    assert final_math_answer("<answer>\\boxed{5}</answer>") == ("5", "boxed in answer")
    assert final_math_answer("\\boxed{4} <answer>5</answer>") == ("5", "answer")  # the answer span wins
    assert final_math_answer("text #### 12\nmore") == ("12", "####")
    assert not layout_ok("<reasoning>a</reasoning><answer>1</answer> trailing")
    assert not layout_ok("<answer>1</answer><reasoning>a</reasoning>")


# ------------------------------------------------------------------------------------------ d1


def test_d1_gsm8k_one_line_reasoning():
    # "<reasoning>\nAdd them.\n</reasoning>\n<answer>\n72\n</answer>\n":
    # correctness 2.0 ("72" == "72"); int 0.5; strict 0.5 (one-line reasoning); soft 0.0 (without DOTALL,
    # ".*?" cannot cross the newline after <reasoning>); xml 4 * 0.125, nothing trails -> 0.5. Sum 3.5.
    result = score(GSM, wrap("72"), D1)
    assert result.components == pytest.approx(
        {"correctness": 2.0, "int": 0.5, "strict_format": 0.5, "soft_format": 0.0, "xml_count": 0.5})
    assert result.score == pytest.approx(3.5) and result.correct


def test_d1_gsm8k_multiline_reasoning_loses_strict_format():
    # The published regex has no DOTALL: two reasoning lines break the strict match. 2 + 0.5 + 0 + 0 + 0.5.
    result = score(GSM, wrap("72", reasoning="Line one.\nLine two."), D1)
    assert result.components["strict_format"] == 0.0 and result.score == pytest.approx(3.0)


def test_d1_gsm8k_soft_format_fires_only_on_one_line():
    # "<reasoning>short</reasoning> <answer>72</answer>": soft 0.5; strict 0; no "\n"-tags -> xml 0.
    result = score(GSM, "<reasoning>short</reasoning> <answer>72</answer>", D1)
    assert result.components == pytest.approx(
        {"correctness": 2.0, "int": 0.5, "strict_format": 0.0, "soft_format": 0.5, "xml_count": 0.0})


def test_d1_gsm8k_xml_count_trailing_text_and_missing_final_newline():
    # Trailing "extra": third term 0.125 - 5 * 0.001 = 0.120; fourth 0.125 - (6 - 1) * 0.001 = 0.120.
    text = wrap("72") + "extra"
    assert d1_xml_count(text) == pytest.approx(0.125 + 0.125 + 0.120 + 0.120)
    assert score(GSM, text, D1).score == pytest.approx(2.0 + 0.5 + 0.0 + 0.0 + 0.49)
    # No final newline: "\n</answer>\n" is absent, so the third term subtracts the whole length, 48 chars
    # (12 + 2 + 13 + 9 + 3 + 9), and the fourth adds 0.001 (len("") - 1 = -1).
    text = "<reasoning>\nr\n</reasoning>\n<answer>\n72\n</answer>"
    assert len(text) == 48
    assert d1_xml_count(text) == pytest.approx(0.125 + 0.125 + (0.125 - 0.048) + (0.125 + 0.001))


def test_d1_gsm8k_string_match_misses_equivalent_forms():
    # "$72": correctness 0 (string match), int 0 ("$72".isdigit() is False), strict 0.5, xml 0.5.
    assert score(GSM, wrap("$72"), D1).score == pytest.approx(1.0)
    # Unicode digits: "٧٢".isdigit() is True, so d1 pays the 0.5 integer bonus: 0.5 + 0.5 + 0.5.
    assert score(GSM, wrap("٧٢"), D1).score == pytest.approx(1.5)
    # d1 takes the text after the LAST <answer>, even unclosed: "72" wins over the first tag's "71".
    assert score(GSM, "<answer>71</answer> <answer>72", D1).components["correctness"] == 2.0


def test_d1_math_boxed_and_format():
    ex = Example("math", "m", "q", {"answer": "\\frac{1}{2}", "solution": "so $\\boxed{\\frac{1}{2}}$"})
    # Correct box inside answer tags: 2.0 + 0.5 * (1.0 tag + 0.5: the "\boxed" test looks for a backspace).
    assert score(ex, wrap("\\boxed{\\frac{1}{2}}"), D1).score == pytest.approx(2.75)
    # No tags, box "0.5": MATH normalisation maps exactly "0.5" to \frac{1}{2}: 2.0 + 0.5 * 0.5.
    assert score(ex, "\\boxed{0.5}", D1).score == pytest.approx(2.25)
    quarter = Example("math", "m", "q", {"answer": "\\frac{1}{4}"})
    assert score(quarter, "\\boxed{0.25}", D1).score == pytest.approx(0.25)  # but 0.25 is not \frac{1}{4}
    assert score(quarter, "\\boxed{0.25}", DEFAULT).correct  # math-verify says it is
    # Without a box d1 compares the whole response: "The answer is 5" -> "Theansweris5" != "5".
    five = Example("math", "m", "q", {"answer": "5"})
    assert score(five, "<answer>5</answer>", D1).score == pytest.approx(0.75)  # format only: 0.5 * 1.5
    assert score(five, "The answer is 5", D1).score == pytest.approx(0.25)
    # An unclosed box: extraction fails, the whole response is compared (and differs).
    assert score(five, "\\boxed{5", D1).components["correctness"] == 0.0


def test_hendrycks_normalisation_quirks():
    assert strip_answer("\\dfrac{3}{4}") == "\\frac{3}{4}" and strip_answer("3/4") == "\\frac{3}{4}"
    assert strip_answer("k = 3") == "3" and strip_answer("abc = 3") == "abc=3"  # left side over 2 chars stays
    assert strip_answer("\\sqrt2") == "\\sqrt{2}" and strip_answer(".5") == "\\frac{1}{2}"
    assert strip_answer("5 \\text{ cm}") == "5" and strip_answer("90^\\circ") == "90"
    with pytest.raises(ValueError):
        strip_answer("x/y")  # the original's int() error escapes; is_equiv then compares raw strings
    assert is_equiv("x/y", "x/y") and not is_equiv("x/y", "\\frac{x}{y}")
    assert is_equiv(None, None) and not is_equiv("1", None)
    assert last_boxed_only("no box") == "no box" and last_boxed_only("\\boxed{1") is None
    assert last_boxed_only("\\boxed 5$ tail") == "\\boxed 5" and remove_boxed("\\boxed 5") == "5"
    with pytest.raises(TypeError):
        remove_boxed(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("gold", "answer", "correct"), [
    ("0.1234567", "0.1234568", False),  # math-verify's 6-decimal rounding would call these equal
    ("0.1234567", "0.1234567", True),
    ("\\frac{14}{3}", "4.666667", False),  # a rounded decimal of an exact fraction
    ("\\frac{14}{3}", "\\frac{28}{6}", True),
    ("\\pi", "3.14159", False),
    ("2\\pi", "\\pi \\cdot 2", True),
    ("\\frac{3}{2}", "1.5", True),  # an exact decimal is still the same number
])
def test_default_exact_gold_needs_the_exact_answer(gold, answer, correct):
    example = Example("math", "m", "q", {"answer": gold})
    assert score(example, wrap(f"\\boxed{{{answer}}}")).correct is correct


@pytest.mark.parametrize("text", ["The answer is 72.", "So the final answer is 72", "Answer: 72",
                                  "I think the answer is: $72$."])
def test_default_plain_statement_without_tags(text):
    result = score(GSM, "Twelve times six.\n" + text)
    assert result.correct and result.components["format"] == 0.0  # correct, but not laid out as asked
    assert not score(GSM, "Twelve times six.\nThe answer is 71.").correct
