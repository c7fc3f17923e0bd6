"""Code rewards (HumanEval, MBPP, KodCode): the share of the task's test cases that the completion's
code passes, each case run in the sandbox (:mod:`actors.sandbox`), never in this process.

No verdict is decided where the solution runs (:mod:`actors.rewards.code_harness` says why and how).
Per case, one sandbox run of the *record* program: the solution, then the test with its asserts
reduced to the operations they perform on the solution (:mod:`actors.rewards.testcases`); it prints
what the solution's functions returned, as plain data. Then the verdict comes from outside:

- a case that is one call with literal arguments and a literal expected value (``assert f(3) == 7``,
  ``assert f(x)``, ``assert not f(x)``, HumanEval's ``check`` holding one such assert) is compared
  here, on the decoded data;
- every other case (loops in ``check``, tolerances, ``pytest.raises``, objects with methods) is
  judged by one *replay* run for the whole completion: a fresh sandbox process in which the
  solution never ran executes the original tests, prompt helpers included, against stubs that
  answer from the records.

A run that ends without a record (``os._exit``, ``sys.exit``, a crash, a timeout) fails its case; a
returned object that is not plain data equals nothing. Runs stop early: after a compile failure
(exit code :data:`COMPILE_FAILED`; every case fails the same way) and after ``code_max_timeouts``
timed-out cases (the rest count as failed).

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

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from actors.rewards import code_harness
from actors.rewards.code_harness import LOG_MARK, VERDICT_MARK, NotPlain, decode, event_key
from actors.rewards.context import RewardContext
from actors.rewards.extract import answer_spans, fenced_blocks, layout_ok
from actors.rewards.testcases import LiteralCheck, literal_check, record_source, solution_names
from actors.sandbox import SandboxResult
from system.types import Example, RewardResult

COMPILE_FAILED = 86
MAX_CODE_CHARS = 50_000
SEED = 20240601  # both runs of a test start Python's random module from it
HARNESS = Path(code_harness.__file__).read_text(encoding="utf-8")


@dataclass(frozen=True)
class CasePlan:
    """One test case as the two sides need it (computed once per distinct test text)."""

    test: str
    names: list[str]
    record: str
    literal: LiteralCheck | None


@lru_cache(maxsize=4096)
def plan_case(test: str, prefix: str, entry_point: str | None) -> CasePlan:
    names = solution_names(test, prefix, entry_point)
    return CasePlan(test, names, record_source(test), literal_check(test, names))


def record_program(solution: str, plan: CasePlan) -> str:
    """The program of one case's record run (ASCII only: the texts become ``ascii()`` literals)."""
    return (HARNESS + f"\n\nrecord_main({ascii(solution)}, {ascii(plan.record)}, {plan.names!r}, {SEED}, "
            f"{COMPILE_FAILED})\n")


def replay_program(prefix: str, cases: list[tuple[str, list[str], str]]) -> str:
    """The program of the replay run: no solution code, only the prompt, the tests and the records."""
    return HARNESS + f"\n\nreplay_main({ascii(prefix)}, {ascii(cases)}, {SEED})\n"


def last_marked(stdout: str, mark: str) -> str | None:
    """The text after ``mark`` on the last line that starts with it."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(mark):
            return line[len(mark):]
    return None


_OPAQUE = object()


def _holds_opaque(value: object, depth: int = 0) -> bool:
    """Does a decoded value hold a handle (an object that is not plain data) anywhere?"""
    if value is _OPAQUE:
        return True
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple, set, frozenset)) and depth < 64:
        return any(_holds_opaque(v, depth + 1) for v in value)
    return False


def judge_literal(check: LiteralCheck, record: str) -> tuple[bool, str]:
    """(passed, why) of a literal case, from the record's data alone."""
    try:
        events = json.loads(record)["events"]
        key = event_key(f"solution.{check.function}", "call", check.args, check.kwargs,
                        lambda o: ["o", type(o).__name__])
        outcome = next(e[1] for e in events if isinstance(e, list) and len(e) == 3 and e[0] == key)
        if outcome[0] == "raise":
            return False, f"{outcome[1]}: {str(outcome[2])[:120]}"
        if outcome[0] != "ok":
            return False, "malformed record"
        value = decode(outcome[1], lambda _: _OPAQUE)
    except StopIteration:
        return False, f"{check.function} was not called"
    except (ValueError, TypeError, KeyError, IndexError, RecursionError, NotPlain) as exc:
        return False, f"unreadable record: {type(exc).__name__}"
    call = f"{check.function}({', '.join(map(repr, check.args))})"
    if _holds_opaque(value):
        return False, f"AssertionError: {call} returned an object that is not plain data"
    ok = {"==": lambda: value == check.expected, "!=": lambda: value != check.expected,
          "truthy": lambda: bool(value), "falsy": lambda: not value,
          "is": lambda: value is check.expected}[check.op]()
    return bool(ok), "" if ok else f"AssertionError: {call[:80]} returned {repr(value)[:80]}"


@dataclass
class TestReport:
    passed: int = 0
    total: int = 0
    compiled: bool = True
    timeouts: int = 0
    sandbox_errors: int = 0
    skipped: int = 0
    first_failure: str = ""
    failures: dict[int, str] = field(default_factory=dict)

    def fail(self, case: int, why: str) -> None:
        self.failures[case] = why
        if not self.first_failure:
            self.first_failure = f"case {case}: {why[:160]}".strip()


def _record_failure(result: SandboxResult) -> str:
    detail = (result.stderr.strip().splitlines() or [result.reason])[-1]
    return f"{result.status} (no record) {detail}"


def run_tests(example: Example, solution: str, ctx: RewardContext) -> TestReport:
    """Run every test case of ``example`` against ``solution``: a record run per case, then the
    verdicts (here for literal cases, in one replay run for the rest)."""
    sandbox, limits = ctx.get_sandbox(), ctx.sandbox_limits()
    max_timeouts = ctx.config.code_max_timeouts if ctx.config is not None else 1
    prefix = str(example.reference.get("prefix") or "")
    entry_point = example.reference.get("entry_point")
    tests = list(example.reference["tests"])
    report = TestReport(total=len(tests))
    pending: list[tuple[int, CasePlan, str]] = []
    for k, test in enumerate(tests):
        if not report.compiled or report.timeouts >= max_timeouts:
            report.skipped = len(tests) - k
            break
        plan = plan_case(test, prefix, entry_point)
        result = sandbox.run(record_program(solution, plan), limits=limits)
        report.timeouts += result.status == "timeout"
        report.sandbox_errors += result.status == "sandbox_error"
        if result.status == "error" and result.exit_code == COMPILE_FAILED:
            report.compiled = False
        record = last_marked(result.stdout, LOG_MARK) if result.status in ("ok", "error") else None
        if record is None or not report.compiled:
            report.fail(k, _record_failure(result))
        elif plan.literal is not None:
            ok, why = judge_literal(plan.literal, record)
            report.passed += ok
            if not ok:
                report.fail(k, why)
        else:
            pending.append((k, plan, record))
    if pending:
        _replay(pending, prefix, ctx, report)
    return report


def _replay(pending: list[tuple[int, CasePlan, str]], prefix: str, ctx: RewardContext, report: TestReport) -> None:
    """One replay run judging every pending case."""
    cases = [(plan.test, plan.names, record) for _, plan, record in pending]
    result = ctx.get_sandbox().run(replay_program(prefix, cases), limits=ctx.sandbox_limits())
    report.sandbox_errors += result.status == "sandbox_error"
    try:
        verdicts = json.loads(last_marked(result.stdout, VERDICT_MARK) or "null")
    except ValueError:
        verdicts = None
    if not isinstance(verdicts, list) or len(verdicts) != len(pending):
        for k, _, _ in pending:
            report.fail(k, f"replay run: {_record_failure(result)}")
        return
    for (k, _, _), (ok, why) in zip(pending, verdicts):
        report.passed += ok is True
        if ok is not True:
            report.fail(k, str(why))


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
    report = run_tests(example, build_solution(example, code), ctx)
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
    report = run_tests(example, build_solution(example, code), ctx)
    share = report.passed / report.total if report.total else 0.0
    parts.update(_components(report))
    return RewardResult(share + fmt, parts, "d1 code: " + _why(report), report.total > 0 and report.passed == report.total)


def time_budget(example: Example, ctx: RewardContext) -> float:
    """Seconds the sandbox runs of one completion may take at most (on top of the worker's timeout):
    one record run per case and one replay run."""
    return (len(example.reference.get("tests") or ()) + 1) * (ctx.sandbox_limits().wall_s + 2.0)
