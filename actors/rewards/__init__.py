"""Reward functions: (example, completion text, context) -> ``RewardResult``, chosen by task name and
profile from a registry. Completions are untrusted input: :func:`score` never raises on them (an
exception inside a reward becomes score 0 with the error as its reason) and code only ever runs in
the sandbox. Time is bounded by the caller: :class:`actors.reward_worker.RewardWorker` scores in
separate processes and kills one that overruns.

Profiles (details and every difference in ``PROFILES.md`` next to this file):

- ``default``, correctness first: score = (1 - w) * correctness + w * format, with w =
  ``reward.format_weight`` (0.1); math through math-verify, countdown through a safe parser with
  exact arithmetic, sudoku checked for validity and givens, code by the share of test cases passed;
  hedged answers (several different answers) score no correctness; d1's bugs fixed.
- ``d1``: the published scoring of d1 (diffu-GRPO) with its quirks, for comparison with the papers:
  the five-term GSM8K sum with regexes lacking DOTALL, MATH string normalisation and the backspace
  ``\\boxed`` check, 0.1 for any countdown ``<answer>``, sudoku digit padding without validity,
  d1's code reward (share + 0.5 in-answer, blocked substrings).
"""

from __future__ import annotations

from collections.abc import Callable

from actors.rewards import code, countdown, maths, sudoku, synthetic
from actors.rewards.context import PROFILES, RewardContext
from actors.rewards.extract import MAX_COMPLETION_CHARS
from system.types import Example, RewardResult

__all__ = ["PROFILES", "RewardContext", "RewardFn", "error_kind", "register_reward", "reward_fn", "reward_names",
           "score", "score_with_error", "time_budget"]

RewardFn = Callable[[Example, str, RewardContext], RewardResult]

_REGISTRY: dict[tuple[str, str], RewardFn] = {
    ("gsm8k", "default"): maths.math_default,
    ("gsm8k", "d1"): maths.gsm8k_d1,
    ("math", "default"): maths.math_default,
    ("math", "d1"): maths.math_d1,
    ("aime", "default"): maths.math_default,
    ("aime", "d1"): maths.math_d1,
    ("countdown", "default"): countdown.countdown_default,
    ("countdown", "d1"): countdown.countdown_d1,
    ("sudoku", "default"): sudoku.sudoku_default,
    ("sudoku", "d1"): sudoku.sudoku_d1,
    ("code", "default"): code.code_default,
    ("code", "d1"): code.code_d1,
    **{(task, profile): synthetic.exact_or_partial for task in ("copy", "add") for profile in PROFILES},
}
_BUDGETS: dict[str, Callable[[Example, RewardContext], float]] = {"code": code.time_budget}


def register_reward(task: str, profile: str, fn: RewardFn) -> None:
    """Add or replace the reward of ``task`` under ``profile`` (in this process only)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown reward profile {profile!r}; known: {list(PROFILES)}")
    _REGISTRY[(task, profile)] = fn


def reward_names() -> list[str]:
    return sorted({task for task, _ in _REGISTRY})


def reward_fn(task: str, profile: str) -> RewardFn:
    """The reward of ``task`` under ``profile``; ValueError naming the known ones otherwise."""
    if (task, profile) not in _REGISTRY:
        if profile not in PROFILES:
            raise ValueError(f"unknown reward profile {profile!r}; known: {list(PROFILES)}")
        raise ValueError(f"no reward for task {task!r}; known tasks: {reward_names()}")
    return _REGISTRY[(task, profile)]


def time_budget(example: Example, ctx: RewardContext) -> float:
    """Extra seconds an item may need beyond the per-item timeout (the sandbox runs of code)."""
    fn = _BUDGETS.get(example.task)
    return fn(example, ctx) if fn is not None else 0.0


def error_kind(exc: BaseException) -> str:
    return f"exception:{type(exc).__name__}"


def score_with_error(example: Example, completion: str, ctx: RewardContext) -> tuple[RewardResult, str | None]:
    """The reward and, when it failed, the kind of failure (``exception:<Type>``, ``unknown_task``,
    ``sandbox_error``); never raises on the completion."""
    if not isinstance(completion, str):
        return RewardResult(0.0, {}, f"completion is a {type(completion).__name__}, not text"), "bad_input"
    if len(completion) > MAX_COMPLETION_CHARS:
        return RewardResult(0.0, {}, f"completion longer than {MAX_COMPLETION_CHARS} characters"), None
    try:
        fn = reward_fn(example.task, ctx.profile)
    except ValueError as e:
        return RewardResult(0.0, {}, str(e)), "unknown_task"
    try:
        result = fn(example, completion, ctx)
    except Exception as e:  # a bug or a data problem: report it with the item, never crash the caller
        return RewardResult(0.0, {}, f"reward error: {type(e).__name__}: {e}"), error_kind(e)
    if result.components.get("sandbox_errors"):
        return result, "sandbox_error"
    return result, None


def score(example: Example, completion: str, ctx: RewardContext | None = None) -> RewardResult:
    """Score one completion in this process (no time bound: see RewardWorker for that)."""
    return score_with_error(example, completion, ctx or RewardContext())[0]
