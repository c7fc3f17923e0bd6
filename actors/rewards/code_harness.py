"""The programs of a code reward's sandbox runs (standard library only: this file's source text is
embedded in each program) and the plain-data codec that carries values between them.

Why two sides. Whatever runs in the same interpreter as the solution is the solution's to change:
builtins, imported modules, the harness's frames and locals, the exit path, the comparison
operators of the objects it returns. So no verdict is ever decided there.

- **record** (:func:`record_main`, in the sandbox with the solution): runs the test with the
  solution's names replaced by recording proxies and with every ``assert`` reduced to the calls it
  makes (the expected values are not in the program). Each operation on the solution (a call, an
  attribute read, ``len`` / ``iter`` / ``next`` / ``[]`` / ``in`` / ``str`` of a returned object) becomes an *event*: a key (target, operation, arguments as data) and an outcome (a value
  as data, a raised built-in exception, or "callable"). The events are printed as one JSON line.
  The solution may forge that line at will: all it can say there is what its functions return.
- **replay** (:func:`replay_main`, in a process where no solution code ever ran): runs the original
  test, asserts included, against stubs that answer each operation from the recorded events, and
  prints one verdict per case. For tests that are a single ``call == literal`` the parent compares
  the recorded value itself (``actors.rewards.code``) and no replay run is needed.

Values cross as tagged JSON (:func:`encode` / :func:`decode`): None, bool, int, float, complex, str,
bytes, list, tuple, dict, set, frozenset. Any other object is a *handle*: on the record side a
proxy that records what the test does with it, on the replay side a stub; both compare by identity
only, so an object whose ``__eq__`` always says True equals nothing, and neither has a truth value. Operations on a stub that were
not recorded raise :class:`Diverged` (a BaseException, so that ``except Exception`` and
``pytest.raises`` in a test do not swallow it): the case fails.
"""

from __future__ import annotations

import builtins
import json
import os
import random
import sys
from collections import deque

MAX_DEPTH = 48
MAX_EVENTS = 20_000
LOG_MARK = "@@stabledrl-record@@"
VERDICT_MARK = "@@stabledrl-verdicts@@"
_MUTABLE = (list, dict, set, bytearray)


class NotPlain(ValueError):
    """A value or a record that cannot cross as plain data (malformed, too deep, too big)."""


class Diverged(BaseException):  # noqa: N818 - a control-flow signal, like SystemExit
    """The replayed test asked for an operation the record does not hold."""


def encode(value: object, on_object, depth: int = 0) -> list:  # noqa: ANN001 - callable(object) -> list
    """Tagged JSON form of ``value``; ``on_object`` encodes whatever is not plain data. Subclasses
    of plain types are encoded as their base type's value (only the data crosses)."""
    if depth > MAX_DEPTH:
        raise NotPlain(f"nested deeper than {MAX_DEPTH}")
    if value is None:
        return ["n"]
    if isinstance(value, bool):
        return ["b", bool(value)]
    if isinstance(value, int):
        return ["i", int.__index__(value)]
    if isinstance(value, float):
        return ["f", float.__repr__(float(value))]
    if isinstance(value, complex):
        return ["c", float.__repr__(value.real), float.__repr__(value.imag)]
    if isinstance(value, str):
        return ["s", str.__str__(value)]
    if isinstance(value, bytes):
        return ["y", bytes(value).hex()]
    if isinstance(value, (list, tuple)):
        tag = "t" if isinstance(value, tuple) else "l"
        return [tag, [encode(v, on_object, depth + 1) for v in list(value)]]
    if isinstance(value, dict):
        return ["d", [[encode(k, on_object, depth + 1), encode(v, on_object, depth + 1)]
                      for k, v in dict.items(dict(value))]]
    if isinstance(value, (set, frozenset)):
        items = [encode(v, on_object, depth + 1) for v in value]
        return ["F" if isinstance(value, frozenset) else "S", sorted(items, key=json.dumps)]
    return on_object(value)


def _float(text: object) -> float:
    if not isinstance(text, str) or len(text) > 40:
        raise NotPlain("a float is not a short string")
    return float(text)


def decode(data: object, on_handle, depth: int = 0) -> object:  # noqa: ANN001 - callable(int) -> object
    """The value of a tagged form, built from built-in types only (``on_handle`` makes handles)."""
    if depth > MAX_DEPTH:
        raise NotPlain(f"nested deeper than {MAX_DEPTH}")
    if not isinstance(data, list) or not data or not isinstance(data[0], str):
        raise NotPlain("not a tagged value")
    tag, args = data[0], data[1:]
    if tag == "n" and not args:
        return None
    if len(args) == 2 and tag == "c":
        return complex(_float(args[0]), _float(args[1]))
    if len(args) != 1:
        raise NotPlain(f"bad arity for tag {tag!r}")
    arg = args[0]
    if tag == "b" and type(arg) is bool:
        return arg
    if tag == "i" and type(arg) is int:
        return arg
    if tag == "f":
        return _float(arg)
    if tag == "s" and type(arg) is str:
        return arg
    if tag == "y" and type(arg) is str:
        return bytes.fromhex(arg)
    if tag == "h" and type(arg) is int:
        return on_handle(arg)
    if tag == "o" and type(arg) is str:
        return _Opaque(arg)
    if type(arg) is not list:
        raise NotPlain(f"bad payload for tag {tag!r}")
    if tag in ("l", "t", "S", "F"):
        items = [decode(v, on_handle, depth + 1) for v in arg]
        try:
            return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
        except TypeError as exc:  # an unhashable set member
            raise NotPlain(str(exc)) from None
    if tag == "d":
        out = {}
        for pair in arg:
            if type(pair) is not list or len(pair) != 2:
                raise NotPlain("bad dict item")
            try:
                out[decode(pair[0], on_handle, depth + 1)] = decode(pair[1], on_handle, depth + 1)
            except TypeError as exc:
                raise NotPlain(str(exc)) from None
        return out
    raise NotPlain(f"unknown tag {tag!r}")


class _Opaque:
    """An argument that is neither data nor a handle (a test's own object): known by type name."""

    def __init__(self, name: str) -> None:
        self.name = name


def exception_name(exc: BaseException) -> str:
    """The most derived built-in Exception class of ``exc`` that takes one message argument."""
    for cls in type(exc).__mro__:
        if getattr(builtins, cls.__name__, None) is cls and issubclass(cls, Exception):
            try:
                cls("")
            except TypeError:
                continue
            return cls.__name__
    return "Exception"


def make_exception(name: object, message: object) -> Exception:
    cls = getattr(builtins, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, Exception)) or not isinstance(message, str):
        raise Diverged(f"recorded exception {name!r} is not a built-in Exception")
    return cls(message)


def event_key(target: str, op: str, args: tuple, kwargs: dict, on_object) -> str:  # noqa: ANN001
    """The key of one operation: what was asked, as data (the same text on both sides)."""
    enc = [encode(a, on_object) for a in args]
    kw = [[k, encode(v, on_object)] for k, v in sorted(kwargs.items())]
    return json.dumps([target, op, enc, kw], separators=(",", ":"))


def target_form(target: str) -> list:
    """How a proxy or stub passed as an argument is written: a handle by number, else by name."""
    if target[:1] == "h" and target[1:].isdigit():
        return ["h", int(target[1:])]
    return ["o", target]


# ----------------------------------------------------------------------------- record side

class _Proxy:
    """Record side: what the test holds instead of a solution object."""

    __slots__ = ("_rec", "_target", "_obj")

    def __init__(self, rec: Recorder, target: str, obj: object) -> None:
        object.__setattr__(self, "_rec", rec)
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_obj", obj)

    def __getattr__(self, name: str) -> object:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._rec.attr(self, name)

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self._rec.op(self, "call", lambda *a, **k: self._obj(*a, **k), args, kwargs)

    def __len__(self) -> int:
        return self._rec.op(self, "len", lambda: len(self._obj), (), {})

    def __iter__(self):  # noqa: ANN204
        return iter(self._rec.op(self, "iter", lambda: list(iter(self._obj)), (), {}))

    def __next__(self) -> object:
        return self._rec.op(self, "next", lambda: next(self._obj), (), {})

    def __getitem__(self, key: object) -> object:
        return self._rec.op(self, "getitem", lambda k: self._obj[k], (key,), {})

    def __contains__(self, item: object) -> bool:
        return self._rec.op(self, "contains", lambda i: i in self._obj, (item,), {})

    def __bool__(self) -> bool:
        raise TypeError("the truth value of an object that is not plain data is not asked")

    def __str__(self) -> str:
        return self._rec.op(self, "str", lambda: str(self._obj), (), {})

    def __repr__(self) -> str:
        return f"<{self._target}>"


class Recorder:
    """Runs operations on the real solution objects and logs them as events."""

    def __init__(self) -> None:
        self.events: list = []
        self.handles: dict[int, tuple[int, object]] = {}  # id(obj) -> (handle, obj: kept alive)
        self.proxies: dict[int, _Proxy] = {}

    def _arg_form(self, value: object) -> list:
        return target_form(value._target) if isinstance(value, _Proxy) else ["o", type(value).__name__]

    def _result_form(self, value: object) -> list:
        if isinstance(value, _Proxy):
            return self._arg_form(value)
        known = self.handles.get(id(value))
        if known is None:
            known = (len(self.handles) + 1, value)
            self.handles[id(value)] = known
        return ["h", known[0]]

    def _proxy(self, handle: int) -> _Proxy:
        if handle not in self.proxies:
            obj = next(o for h, o in self.handles.values() if h == handle)
            self.proxies[handle] = _Proxy(self, f"h{handle}", obj)
        return self.proxies[handle]

    def as_test_sees(self, encoded: list) -> object:
        """What the replay will see, so that both runs of the test take the same path."""
        return decode(encoded, self._proxy)

    def attr(self, proxy: _Proxy, name: str) -> object:
        key = event_key(proxy._target, "attr", (name,), {}, self._arg_form)
        try:
            value = getattr(proxy._obj, name)
        except Exception as exc:
            return self._log_raise(key, exc)
        if callable(value):
            self._log(key, ["callable"], [])
            return _Proxy(self, f"{proxy._target}.{name}", value)
        return self._log_value(key, value, [])

    def op(self, proxy: _Proxy, op: str, fn, args: tuple, kwargs: dict) -> object:  # noqa: ANN001
        key = event_key(proxy._target, op, args, kwargs, self._arg_form)
        real = [a._obj if isinstance(a, _Proxy) else a for a in args]
        real_kw = {k: v._obj if isinstance(v, _Proxy) else v for k, v in kwargs.items()}
        state = random.getstate()  # the test's random stream must not depend on the solution
        try:
            value = fn(*real, **real_kw)
        except Exception as exc:
            return self._log_raise(key, exc)
        finally:
            random.setstate(state)
        post = [encode(a, self._arg_form) if isinstance(a, _MUTABLE) else None for a in real]
        for arg, after in zip(real, post):
            if after is not None:
                _restore(arg, self.as_test_sees(after))
        return self._log_value(key, value, post)

    def _log(self, key: str, outcome: list, post: list) -> None:
        if len(self.events) >= MAX_EVENTS:
            raise RuntimeError(f"more than {MAX_EVENTS} operations on the solution")
        self.events.append([key, outcome, post])

    def _log_value(self, key: str, value: object, post: list) -> object:
        try:
            encoded = encode(value, self._result_form)
            json.dumps(encoded)
        except (NotPlain, ValueError, RecursionError) as exc:
            return self._log_raise(key, TypeError(f"result is not plain data: {exc}"))
        self._log(key, ["ok", encoded], post)
        return self.as_test_sees(encoded)

    def _log_raise(self, key: str, exc: BaseException) -> object:
        name, message = exception_name(exc), str(exc)[:300]
        self._log(key, ["raise", name, message], [])
        raise make_exception(name, message)


def _restore(arg: object, value: object) -> None:
    """Put a mutated argument's recorded state back into the test's own object."""
    if isinstance(arg, (list, bytearray)) and isinstance(value, (list, bytes)):
        arg[:] = value
    elif isinstance(arg, (dict, set)) and isinstance(value, type(arg)):
        arg.clear()
        arg.update(value)


def record_main(solution: str, test: str, names: list[str], seed: int, compile_failed: int) -> None:
    """Record side (see the module docstring). The solution's own prints go to stderr; the record
    goes to the real stdout as one line after :data:`LOG_MARK`."""
    log_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        code = compile(solution, "solution.py", "exec")
    except BaseException as exc:  # noqa: BLE001 - any compile failure
        sys.stderr.write(f"solution does not compile: {exc!r}\n")
        raise SystemExit(compile_failed) from None
    module = type(sys)("solution")
    module.__file__ = "solution.py"
    sys.modules["solution"] = module
    rec = Recorder()
    error = ""
    try:
        exec(code, module.__dict__)
        root = _Proxy(rec, "solution", module)
        sys.modules["solution"] = root  # type: ignore[assignment]
        scope = dict(module.__dict__)
        scope["__name__"] = "__test__"
        for name in names:
            try:
                scope[name] = rec.attr(root, name)
            except Exception:  # noqa: BLE001 - recorded; the test fails on the name later
                scope.pop(name, None)
        random.seed(seed)
        exec(compile(test, "test.py", "exec"), scope)
    except Exception as exc:  # noqa: BLE001 - reported; the replay decides
        error = f"{type(exc).__name__}: {exc}"[:300]
        sys.stderr.write(error + "\n")
    finally:
        record = json.dumps({"events": rec.events, "error": error}, separators=(",", ":"))
        os.write(log_fd, ("\n" + LOG_MARK + record + "\n").encode())


# ----------------------------------------------------------------------------- replay side

class _Stub:
    """Replay side: answers each operation from the record."""

    __slots__ = ("_rep", "_target")

    def __init__(self, rep: Replayer, target: str) -> None:
        object.__setattr__(self, "_rep", rep)
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name: str) -> object:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._rep.answer(self, "attr", (name,), {})

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self._rep.answer(self, "call", args, kwargs)

    def __len__(self) -> int:
        return self._rep.answer(self, "len", (), {})

    def __iter__(self):  # noqa: ANN204
        return iter(self._rep.answer(self, "iter", (), {}))

    def __next__(self) -> object:
        return self._rep.answer(self, "next", (), {})

    def __getitem__(self, key: object) -> object:
        return self._rep.answer(self, "getitem", (key,), {})

    def __contains__(self, item: object) -> bool:
        return self._rep.answer(self, "contains", (item,), {})

    def __bool__(self) -> bool:
        raise TypeError("the truth value of an object that is not plain data is not asked")

    def __str__(self) -> str:
        return self._rep.answer(self, "str", (), {})

    def __repr__(self) -> str:
        return f"<{self._target}>"


class Replayer:
    """Answers a test's operations on the solution from one case's recorded events (per key, in
    the recorded order)."""

    def __init__(self, events: object) -> None:
        if not isinstance(events, list):
            raise NotPlain("events is not a list")
        self.queues: dict[str, deque] = {}
        for event in events:
            if not (isinstance(event, list) and len(event) == 3 and isinstance(event[0], str)
                    and isinstance(event[1], list) and isinstance(event[2], list)):
                raise NotPlain("malformed event")
            self.queues.setdefault(event[0], deque()).append((event[1], event[2]))
        self.stubs: dict[str, _Stub] = {}

    def stub(self, target: str) -> _Stub:
        if target not in self.stubs:
            self.stubs[target] = _Stub(self, target)
        return self.stubs[target]

    def _handle(self, handle: int) -> _Stub:
        return self.stub(f"h{handle}")

    def _arg_form(self, value: object) -> list:
        return target_form(value._target) if isinstance(value, _Stub) else ["o", type(value).__name__]

    def answer(self, stub: _Stub, op: str, args: tuple, kwargs: dict) -> object:
        key = event_key(stub._target, op, args, kwargs, self._arg_form)
        queue = self.queues.get(key)
        if not queue:
            raise Diverged(f"the record has no {op} of {stub._target} with these arguments")
        outcome, post = queue.popleft()
        kind = outcome[0] if outcome else None
        if kind == "callable" and op == "attr":
            return self.stub(f"{stub._target}.{args[0]}")
        if kind == "raise" and len(outcome) == 3:
            raise make_exception(outcome[1], outcome[2])
        if kind != "ok" or len(outcome) != 2:
            raise Diverged("malformed outcome")
        try:
            value = decode(outcome[1], self._handle)
            for arg, after in zip(args, post):
                if after is not None and isinstance(arg, _MUTABLE):
                    _restore(arg, decode(after, self._handle))
        except (NotPlain, ValueError, RecursionError) as exc:
            raise Diverged(f"bad recorded value: {exc}") from None
        return value


def replay_case(prefix: str, test: str, names: list[str], record: str, seed: int) -> list:
    """[passed, why] for one case: the original test against the recorded events."""
    try:
        data = json.loads(record)
        rep = Replayer(data["events"])
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        return [False, f"unreadable record: {type(exc).__name__}"]
    scope: dict = {"__name__": "__test__", "__builtins__": builtins}
    try:
        exec(compile(prefix, "prompt.py", "exec"), scope)
        root = rep.stub("solution")
        sys.modules["solution"] = root  # type: ignore[assignment]
        for name in names:
            scope[name] = rep.answer(root, "attr", (name,), {})
        random.seed(seed)
        exec(compile(test, "test.py", "exec"), scope)
    except BaseException as exc:  # noqa: BLE001 - the verdict of this case
        return [False, f"{type(exc).__name__}: {exc}"[:300]]
    return [True, ""]


def replay_main(prefix: str, cases: list, seed: int) -> None:
    """Replay side: one verdict per (test, names, record) case, printed after :data:`VERDICT_MARK`."""
    verdicts = [replay_case(prefix, test, names, record, seed) for test, names, record in cases]
    sys.stdout.write("\n" + VERDICT_MARK + json.dumps(verdicts) + "\n")
    sys.stdout.flush()
