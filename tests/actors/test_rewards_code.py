"""Code rewards with the real sandbox (actors.sandbox.ProcessSandbox through make_sandbox): share of
test cases passed, format, forged exits and prints that must not pass, endless loops, HumanEval
prefixes, KodCode's pytest stand-in, and d1's code reward."""

from __future__ import annotations

import pytest

from actors.rewards import RewardContext, score
from actors.rewards.code import COMPILE_FAILED, plan_case, record_program
from actors.tasks.code import code_example
from actors.tasks.loading import Row
from system.config import RewardConfig

MBPP = code_example(Row("mbpp.jsonl", 1, {
    "task_id": 7, "text": "Write a function add(a, b) returning the sum.",
    "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(2, 2) == 4"]}))
HUMANEVAL = code_example(Row("he.jsonl", 1, {
    "task_id": "HumanEval/x", "entry_point": "total",
    "prompt": "from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    \"\"\"Sum of xs.\"\"\"\n",
    "test": "def check(candidate):\n    assert candidate([]) == 0\n    assert candidate([1, 2]) == 3\n"}))
KODCODE = code_example(Row("kod.jsonl", 1, {
    "question_id": "k1", "question": "Write inverse(x) raising ValueError for 0.",
    "test": "import pytest\nfrom solution import inverse\n\ndef test_value():\n    assert inverse(4) == pytest.approx(0.25)\n\n"
            "def test_zero():\n    with pytest.raises(ValueError):\n        inverse(0)\n"}))


@pytest.fixture(scope="module")
def ctx():
    config = RewardConfig(sandbox_wall_s=3.0, sandbox_cpu_s=3.0)  # generous: the CPU is shared
    return RewardContext.from_config(config)


@pytest.fixture(scope="module")
def d1(ctx):
    return RewardContext("d1", config=ctx.config, sandbox=ctx.get_sandbox())


def answer(code: str) -> str:
    return f"<reasoning>\nSimple.\n</reasoning>\n<answer>\n```python\n{code}```\n</answer>\n"


def test_record_program_is_ascii_and_holds_no_expected_value():
    plan = plan_case("assert add(1, 2) == 12345\n", "", "add")
    program = record_program("print('\u00e9')\n", plan)
    # ascii() escapes the non-ASCII character; the expected value 12345 is not in the program.
    assert program.isascii() and """record_main("print('\\xe9')\\n", '(add(1, 2),)\\n'""" in program
    assert "12345" not in program and f", {COMPILE_FAILED})" in program
    assert plan.literal is not None and (plan.literal.args, plan.literal.expected) == ((1, 2), 12345)


def test_correct_partial_and_wrong(ctx):
    result = score(MBPP, answer("def add(a, b):\n    return a + b\n"), ctx)
    assert result.correct and result.score == pytest.approx(1.0)
    assert (result.components["tests_passed"], result.components["tests_total"]) == (3.0, 3.0)
    # a * b: add(1, 2) = 2 fails; add(0, 0) = 0 and add(2, 2) = 4 pass -> 2/3; 0.9 * 2/3 + 0.1 * 1 = 0.7.
    partial = score(MBPP, answer("def add(a, b):\n    return a * b\n"), ctx)
    assert partial.score == pytest.approx(0.7) and not partial.correct
    assert "2/3 test cases passed" in partial.reason and "AssertionError" in partial.reason


def test_syntax_error_runs_once(ctx):
    result = score(MBPP, answer("def add(a, b:\n    return a + b\n"), ctx)
    assert result.score == 0.0 and result.components["format"] == 0.0
    assert "does not compile" in result.reason and "2 not run" in result.reason


@pytest.mark.parametrize("code", [
    "import os\nos._exit(0)\n",  # exit 0 before the tests run
    "import sys\nprint('PASSED')\nprint('ok')\nsys.exit(0)\n",  # a forged verdict and a clean exit
    "def add(a, b):\n    raise SystemExit(0)\n",
    "import sys\nsys.stdout.write('\\n' * 3)\nimport os\nos.kill(os.getpid(), 9)\n",
])
def test_forged_exits_and_prints_do_not_pass(ctx, code):
    result = score(MBPP, answer(code), ctx)
    assert result.components["tests_passed"] == 0.0 and not result.correct


def test_endless_loop_times_out_once_then_stops(ctx):
    result = score(MBPP, answer("def add(a, b):\n    while True:\n        pass\n"), ctx)
    assert result.components["timeouts"] == 1.0 and result.components["tests_passed"] == 0.0
    assert "2 not run" in result.reason and result.score == pytest.approx(0.1)  # format only


def test_format_component(ctx):
    code = "def add(a, b):\n    return a + b\n"
    bare = score(MBPP, f"```python\n{code}```", ctx)  # compiles, but not inside an answer
    assert bare.components["format"] == 0.5 and bare.score == pytest.approx(0.95)
    plain = score(MBPP, f"<answer>\n{code}</answer>", ctx)  # no fence: the span itself is the code
    assert plain.correct and plain.components["format"] == 0.5
    assert score(MBPP, "I cannot do this.", ctx).score == 0.0


def test_humaneval_prefix_whole_function_or_body(ctx):
    whole = "def total(xs: List[int]) -> int:\n    return sum(xs)\n"  # List comes from the prompt's import
    assert score(HUMANEVAL, answer(whole), ctx).correct
    body = "    return sum(xs)\n"
    assert score(HUMANEVAL, answer(body), ctx).correct
    # Wrong on [1, 2] only: one of the two cases.
    assert score(HUMANEVAL, answer("def total(xs):\n    return len(xs)\n"), ctx).components["tests_passed"] == 1.0


def test_kodcode_pytest_standin(ctx):
    good = "def inverse(x):\n    if x == 0:\n        raise ValueError('zero')\n    return 1 / x\n"
    assert score(KODCODE, answer(good), ctx).correct
    no_raise = "def inverse(x):\n    return 1 / x if x else 0\n"  # DID NOT RAISE on 0
    assert score(KODCODE, answer(no_raise), ctx).components["tests_passed"] == 1.0


def test_d1_code_reward(d1):
    right = "def add(a, b):\n    return a + b\n"
    assert score(MBPP, answer(right), d1).score == pytest.approx(1.5)  # share 1 + 0.5 in the answer
    assert score(MBPP, f"```python\n{right}```", d1).score == pytest.approx(1.0)  # outside the answer
    renamed = "def plus(a, b):\n    return a + b\n"  # d1 renames the first def to the expected name
    assert score(MBPP, answer(renamed), d1).score == pytest.approx(1.5)
    blocked = "import os\ndef add(a, b):\n    return a + b\n"  # " os" is on d1's block list: not run
    result = score(MBPP, answer(blocked), d1)
    assert result.score == pytest.approx(0.5) and "blocked" in result.reason
    assert score(MBPP, answer("x = 1\n"), d1).score == pytest.approx(0.5)  # no def: format only
    assert score(MBPP, "<answer>```py\nprint(1)```</answer>", d1).score == 0.0  # d1 wants ```python\n
