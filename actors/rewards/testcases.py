"""Reading a code test case (trusted dataset text, parsed with ``ast``, never run here) for the two
sides of :mod:`actors.rewards.code_harness`:

- :func:`solution_names`: the names the test takes from the solution (free names that neither the
  test nor the prompt's prefix defines, plus ``from solution import ...`` and the entry point);
- :func:`record_source`: the test as the solution's process runs it, each ``assert`` reduced to the
  operations it performs on the solution, so that literal expected values are not in the program
  (``assert f(3) == 7`` becomes ``f(3)``);
- :func:`literal_check`: a case that is one ``call == literal`` (or ``call``, ``not call``,
  ``call is None / True / False``, ``!=``) with literal arguments, compared by the parent without a
  replay run.

The reduction keeps every sub-expression that may operate on a solution object and drops only what
cannot: pure literals, and the comparison / arithmetic / ``abs`` / ``round`` / ``math.*`` shells
around the calls (on a proxy those raise TypeError without touching the solution, in both runs).
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass

_BUILTINS = frozenset(vars(builtins))
# Calls that only apply numeric dunders (absent on proxies and stubs): their shells can be dropped.
_SHELL_CALLS = frozenset({"abs", "round", "float", "int", "complex", "isinstance", "type"})


def _bound_names(tree: ast.AST) -> set[str]:
    """Every name the test binds anywhere (assignments, defs, imports, parameters, handlers)."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.ImportFrom) and node.module == "solution":
                continue
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound


def _imported_modules(tree: ast.AST) -> set[str]:
    return {(a.asname or a.name).split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
            for a in node.names if a.name != "solution"}


def solution_names(test: str, prefix: str = "", entry_point: str | None = None) -> list[str]:
    """Sorted names the test takes from the solution."""
    tree = ast.parse(test)
    defined = _bound_names(tree)
    if prefix:
        defined |= _bound_names(ast.parse(prefix))
    free = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    names = {n for n in free if n not in defined and n not in _BUILTINS}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "solution":
            names.update(a.name for a in node.names if a.name != "*")
    if entry_point and entry_point in free:
        names.add(entry_point)  # defined by the prompt's stub, taken from the solution all the same
    return sorted(names)


def _pure(node: ast.AST) -> bool:
    """A literal: no names other than True/False/None, no attribute, subscript or call."""
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


class _Reducer:
    def __init__(self, modules: set[str]) -> None:
        self.modules = modules

    def _shell_call(self, node: ast.Call) -> bool:
        func = node.func
        if isinstance(func, ast.Name):
            return func.id in _SHELL_CALLS
        return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in self.modules

    def reduce(self, node: ast.expr) -> list[ast.expr]:
        """The sub-expressions of ``node`` to evaluate on the record side."""
        if _pure(node) or isinstance(node, ast.Name):
            return []  # no operation on the solution (a proxy's truth value is refused on both sides)
        if isinstance(node, ast.Compare):
            if any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
                return [node]  # containment may ask a returned object; keep it whole
            return [e for part in (node.left, *node.comparators) for e in self.reduce(part)]
        if isinstance(node, ast.BoolOp):
            return [e for value in node.values for e in self.reduce(value)]
        if isinstance(node, ast.UnaryOp):
            return self.reduce(node.operand)
        if isinstance(node, ast.BinOp):
            return self.reduce(node.left) + self.reduce(node.right)
        if isinstance(node, ast.Call) and self._shell_call(node):
            return [e for arg in [*node.args, *(k.value for k in node.keywords)] for e in self.reduce(arg)]
        return [node]


class _AssertReducer(ast.NodeTransformer):
    def __init__(self, modules: set[str]) -> None:
        self.reducer = _Reducer(modules)

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:  # noqa: N802 - NodeTransformer's naming
        kept = self.reducer.reduce(node.test)
        if not kept:
            return ast.copy_location(ast.Pass(), node)
        return ast.copy_location(ast.Expr(ast.Tuple(kept, ast.Load())), node)


def record_source(test: str) -> str:
    """The test with its asserts reduced (see the module docstring)."""
    tree = ast.parse(test)
    tree = _AssertReducer(_imported_modules(tree)).visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


@dataclass(frozen=True)
class LiteralCheck:
    """One call with literal arguments and how its value is judged."""

    function: str
    args: tuple
    kwargs: dict
    op: str  # "==", "!=", "truthy", "falsy", "is"
    expected: object = None


def _literal_call(node: ast.expr, alias: dict[str, str]) -> tuple[str, tuple, dict] | None:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in alias):
        return None
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        return None
    if not all(_pure(a) for a in node.args) or not all(_pure(k.value) for k in node.keywords):
        return None
    args = tuple(ast.literal_eval(a) for a in node.args)
    return alias[node.func.id], args, {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}


def _judge(test: ast.expr, alias: dict[str, str]) -> LiteralCheck | None:
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        call = _literal_call(test.operand, alias)
        return LiteralCheck(*call, "falsy") if call else None
    if not isinstance(test, ast.Compare):
        call = _literal_call(test, alias)
        return LiteralCheck(*call, "truthy") if call else None
    if len(test.ops) != 1:
        return None
    op = {ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is"}.get(type(test.ops[0]))
    left, right = test.left, test.comparators[0]
    if op is None:
        return None
    if _pure(left) and op != "is":
        left, right = right, left
    call = _literal_call(left, alias)
    if call is None or not _pure(right):
        return None
    expected = ast.literal_eval(right)
    if op == "is" and expected not in (None, True, False):
        return None
    return LiteralCheck(*call, op, expected)


def _ignorable(stmt: ast.stmt) -> bool:
    if isinstance(stmt, (ast.Pass, ast.Import, ast.ImportFrom)):
        return not (isinstance(stmt, ast.ImportFrom) and stmt.module == "solution")
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return True  # a docstring or a bare constant
    return isinstance(stmt, ast.Assign) and _pure(stmt.value)  # METADATA = {...}


def literal_check(test: str, names: list[str]) -> LiteralCheck | None:
    """The case's single literal check, or None when the case needs a replay run."""
    body = [s for s in ast.parse(test).body if not _ignorable(s)]
    alias = {n: n for n in names}
    if len(body) == 1 and isinstance(body[0], ast.Assert):
        return _judge(body[0].test, alias)
    if len(body) != 2 or not isinstance(body[0], ast.FunctionDef) or not isinstance(body[1], ast.Expr):
        return None
    check, call = body
    params = check.args.args
    if not (isinstance(call.value, ast.Call) and isinstance(call.value.func, ast.Name)
            and call.value.func.id == check.name and len(call.value.args) == 1 and len(params) == 1
            and isinstance(call.value.args[0], ast.Name) and call.value.args[0].id in names
            and not check.decorator_list and not call.value.keywords):
        return None  # HumanEval's shape: def check(candidate): <one assert>, then check(entry_point)
    inner = [s for s in check.body if not _ignorable(s)]
    if len(inner) != 1 or not isinstance(inner[0], ast.Assert):
        return None
    return _judge(inner[0].test, {params[0].arg: call.value.args[0].id})
