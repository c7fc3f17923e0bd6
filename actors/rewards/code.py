"""Code rewards (HumanEval, MBPP, KodCode): the share of the task's test cases that the completion's
code passes, each case run in the sandbox (:mod:`actors.sandbox`), never in this process.

One sandbox run per test case. The program is a fixed harness with the solution and the test as
string literals: it reads a fresh random token from stdin (then closes stdin), compiles the solution
(exit code :data:`COMPILE_FAILED` if it does not compile), executes it as module ``solution`` (so
``from solution import f`` works), runs the test case, and only then prints the token. A case passes
only when the run ends ``ok`` *and* the token appears on a line of stdout. The model's code runs in
the same process as the harness, so exit codes and printed text can be forged (``os._exit(0)``,
``print("PASSED")``); the token cannot be printed without first reading it out of the harness's
stack (frames, ``gc``): a determined, introspecting program could, an accidental or lazy one cannot.
Objects whose ``__eq__`` always says True still pass ``assert f(x) == y`` tests (a limit of
assert-based tests everywhere). Runs stop early: after a compile failure (every case fails the same
way) and after ``code_max_timeouts`` timed-out cases (the rest count as failed).

``default``: the code is the last fenced block of the last ``<answer>`` span (else of the whole
text; else the span itself). format = 1.0 for exactly one fenced block inside a well-laid-out
answer that compiles, 0.5 for code that compiles elsewhere, 0.0 otherwise. score = (1 - w) * share
+ w * format; correct when every case passes.

``d1`` (d1's ``coding_reward_func``): the first "```python\\n" block anywhere; +0.5 when it appears
verbatim inside the first ``<answer>`` span; the first ``def`` is renamed to the expected function;
code containing any of d1's blocked substrings (" os", " sys", ...) is not run (share 0); score =
share + 0.5 * in_answer. Departure: tests are the cases built at load time, not d1's regex split.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from actors.rewards.context import RewardContext
from actors.rewards.extract import answer_spans, fenced_blocks, layout_ok
from system.types import Example, RewardResult

COMPILE_FAILED = 86
MAX_CODE_CHARS = 50_000
_HARNESS = """\
import sys as _sys
import types as _types


def _stabledrl_harness(solution, test):
    token = _sys.stdin.readline().strip()
    try:
        _sys.stdin.close()
    except Exception:
        pass
    try:
        code = compile(solution, "solution.py", "exec")
    except BaseException as exc:
        _sys.stderr.write("solution does not compile: %r\\n" % (exc,))
        _sys.stderr.flush()
        raise SystemExit(%COMPILE_FAILED%)
    module = _types.ModuleType("solution")
    module.__file__ = "solution.py"
    _sys.modules["solution"] = module
    exec(code, module.__dict__)
    scope = dict(module.__dict__)
    scope["__name__"] = "__test__"
    exec(compile(test, "test.py", "exec"), scope)
    _sys.stdout.write("\\n" + token + "\\n")
    _sys.stdout.flush()


_stabledrl_harness(%SOLUTION%, %TEST%)
"""


def harness_program(solution: str, test: str) -> str:
    """The program of one sandbox run (ASCII only: both texts become ``ascii()`` literals)."""
    return (_HARNESS.replace("%COMPILE_FAILED%", str(COMPILE_FAILED))
            .replace("%SOLUTION%", ascii(solution)).replace("%TEST%", ascii(test)))


@dataclass
class TestReport:
    passed: int = 0
    total: int = 0
    compiled: bool = True
    timeouts: int = 0
    sandbox_errors: int = 0
    skipped: int = 0
    first_failure: str = ""


def run_tests(solution: str, tests: list[str], ctx: RewardContext) -> TestReport:
    """Run every test case of ``tests`` against ``solution`` in the sandbox, one run per case."""
    sandbox, limits = ctx.get_sandbox(), ctx.sandbox_limits()
    max_timeouts = ctx.config.code_max_timeouts if ctx.config is not None else 1
    report = TestReport(total=len(tests))
    for k, test in enumerate(tests):
        if not report.compiled or report.timeouts >= max_timeouts:
            report.skipped = len(tests) - k
            break
        token = secrets.token_hex(16)
        result = sandbox.run(harness_program(solution, test), stdin=token + "\n", limits=limits)
        if result.status == "ok" and token in result.stdout.splitlines():
            report.passed += 1
            continue
        if result.status == "error" and result.exit_code == COMPILE_FAILED:
            report.compiled = False
        report.timeouts += result.status == "timeout"
        report.sandbox_errors += result.status == "sandbox_error"
        if not report.first_failure:
            detail = (result.stderr.strip().splitlines() or [result.reason])[-1]
            report.first_failure = f"case {k}: {result.status} {detail[:160]}".strip()
    return report


def build_solution(example: Example, code: str) -> str:
    """Source of module ``solution``: HumanEval's prompt (imports, helpers, the stub) before the
    code, which either continues the stub (indented body) or redefines the function."""
    prefix = str(example.reference.get("prefix") or "")
    if not prefix:
        return code
    first = next((line for line in code.splitlines() if line.strip()), "")
    return prefix + code if first[:1] in (" ", "\t") else prefix.rstrip("\n") + "\n\n\n" + code


def _components(report: TestReport) -> dict[str, float]:
    return {"tests_passed": float(report.passed), "tests_total": float(report.total),
            "timeouts": float(report.timeouts), "sandbox_errors": float(report.sandbox_errors)}


def _why(report: TestReport) -> str:
    text = f"{report.passed}/{report.total} test cases passed"
    if not report.compiled:
        text += "; the code does not compile"
    if report.skipped:
        text += f"; {report.skipped} not run"
    return text + (f"; first failure: {report.first_failure}" if report.first_failure else "")


def _default_code(completion: str) -> tuple[str | None, bool]:
    """(code, placed as asked: one fenced block inside a well-laid-out answer)."""
    spans = answer_spans(completion)
    region = spans[-1] if spans else completion
    blocks = fenced_blocks(region)
    if blocks:
        return blocks[-1], bool(spans) and len(blocks) == 1 and layout_ok(completion)
    if spans and spans[-1].strip():
        return spans[-1].strip("\n"), False
    return None, False


def code_default(example: Example, completion: str, ctx: RewardContext) -> RewardResult:
    code, placed = _default_code(completion)
    if code is None or not code.strip():
        return ctx.blend(0.0, 0.0, {}, "no code found (no fenced block, no <answer> span)", False)
    if len(code) > MAX_CODE_CHARS:
        return ctx.blend(0.0, 0.0, {}, f"code longer than {MAX_CODE_CHARS} characters", False)
    tests = list(example.reference["tests"])
    report = run_tests(build_solution(example, code), tests, ctx)
    share = report.passed / report.total if report.total else 0.0
    fmt = (1.0 if placed else 0.5) if report.compiled else 0.0
    return ctx.blend(share, fmt, _components(report), _why(report), report.total > 0 and report.passed == report.total)


_D1_BLOCKED = (" os", " sys", " subprocess", " shutil", " socket", " psutil", " ctypes", " pathlib", " builtins",
               "__import__")
_D1_CODE = re.compile(r"```python\n(.*?)```", re.DOTALL)
_D1_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_D1_DEF = re.compile(r"def (\w+)\(")


def code_d1(example: Example, completion: str, ctx: RewardContext) -> RewardResult:
    match = _D1_CODE.search(completion)
    code = match.group(1) if match else ""
    answer = _D1_ANSWER.search(completion)
    in_answer = bool(answer and code) and f"```python\n{code}```" in answer.group(1)  # type: ignore[union-attr]
    fmt = 0.5 if in_answer else 0.0
    parts = {"format": fmt, "tests_passed": 0.0, "tests_total": float(len(example.reference["tests"]))}
    expected = example.reference.get("entry_point")
    if not expected:
        return RewardResult(0.0, parts, "d1 code: the task names no function (d1 scores 0)", False)
    defined = _D1_DEF.search(code)
    if not defined:
        return RewardResult(fmt, parts, "d1 code: no function definition", False)
    if len(code) > MAX_CODE_CHARS:
        return RewardResult(fmt, parts, f"d1 code: longer than {MAX_CODE_CHARS} characters", False)
    if defined.group(1) != expected:
        code = re.sub(rf"\bdef {defined.group(1)}\b", lambda _: f"def {expected}", code)
    if any(blocked in code for blocked in _D1_BLOCKED):
        return RewardResult(fmt, parts, "d1 code: a blocked substring (d1's is_safe_code); not run", False)
    report = run_tests(build_solution(example, code), list(example.reference["tests"]), ctx)
    share = report.passed / report.total if report.total else 0.0
    parts.update(_components(report))
    return RewardResult(share + fmt, parts, "d1 code: " + _why(report), report.total > 0 and report.passed == report.total)


def time_budget(example: Example, ctx: RewardContext) -> float:
    """Seconds the sandbox runs of one completion may take at most (on top of the worker's timeout)."""
    return len(example.reference.get("tests") or ()) * (ctx.sandbox_limits().wall_s + 2.0)
