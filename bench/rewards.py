"""Throughput of the reward workers: items per second for math (math-verify), countdown, sudoku and
code (programs that pass their tests, and programs that loop until the sandbox's wall-clock limit),
with 1 and 2 worker processes, default profile.

Items are built here: generated countdown and sudoku puzzles with right and wrong answers, GSM8K-style
math answers in several forms (plain, $, units, fractions, wrong), and small MBPP-style problems with
three test cases each (one sandbox run per case). Timing starts after the workers report ready.

    python bench/rewards.py [--items 256] [--code-items 16] [--timeout-items 4] [--wall 1.0]

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from actors.generators.countdown import generate_countdown
from actors.generators.sudoku import generate_sudoku
from actors.reward_worker import RewardWorker
from actors.tasks.code import code_example
from actors.tasks.loading import Row
from actors.tasks.puzzles import countdown_from_item, sudoku_from_item
from system.config import RewardConfig
from system.types import Example

PROBLEMS = [  # (function name, tests, a correct body)
    ("add", ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"], "return a + b", "a, b"),
    ("rev", ["assert rev('abc') == 'cba'", "assert rev('') == ''", "assert rev('ab') == 'ba'"], "return s[::-1]", "s"),
    ("fact", ["assert fact(0) == 1", "assert fact(5) == 120", "assert fact(3) == 6"],
     "return 1 if n == 0 else n * fact(n - 1)", "n"),
    ("is_prime", ["assert is_prime(7)", "assert not is_prime(8)", "assert not is_prime(1)"],
     "return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))", "n"),
    ("biggest", ["assert biggest([1, 5, 2]) == 5", "assert biggest([-3]) == -3", "assert biggest([2, 2]) == 2"],
     "return max(xs)", "xs"),
    ("fib", ["assert fib(0) == 0", "assert fib(10) == 55", "assert fib(2) == 1"],
     "a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a", "n"),
]


def wrap(answer: str) -> str:
    return f"<reasoning>\nWork it out.\n</reasoning>\n<answer>\n{answer}\n</answer>\n"


def math_items(n: int, offset: int = 0) -> list[tuple[Example, str]]:
    forms = ["{a}", "${a}", "{a} dollars", "\\boxed{{{a}}}", "{a}.0", "{b}", "\\frac{{{a2}}}{{2}}", "{a} or {b}"]
    items = []
    for i in range(n):
        a = 10 + offset + (i * 37) % 990
        ex = Example("gsm8k", f"m{i}", "q", {"answer": str(a)})
        items.append((ex, wrap(forms[i % len(forms)].format(a=a, b=a + 1, a2=2 * a))))
    return items


def countdown_items(n: int) -> list[tuple[Example, str]]:
    items = []
    for i, item in enumerate(generate_countdown(n, seed=11)):
        answer = item.solution if i % 2 == 0 else " + ".join(map(str, item.numbers))
        items.append((countdown_from_item(item, f"c{i}"), wrap(answer)))
    return items


def sudoku_items(n: int) -> list[tuple[Example, str]]:
    items = []
    for i, item in enumerate(generate_sudoku(n, 4, 8, seed=11)):
        answer = item.solution if i % 2 == 0 else item.puzzle.replace("0", "1")
        items.append((sudoku_from_item(item, f"s{i}"), wrap(answer)))
    return items


def code_items(n: int, loop: bool) -> list[tuple[Example, str]]:
    items = []
    for i in range(n):
        name, tests, body, params = PROBLEMS[i % len(PROBLEMS)]
        ex = code_example(Row("bench", i + 1, {"task_id": i, "text": f"Write {name}.", "test_list": tests}))
        code = f"def {name}({params}):\n    " + ("while True:\n        pass" if loop else body) + "\n"
        items.append((ex, wrap(f"```python\n{code}```")))
    return items


def timed(worker: RewardWorker, items: list[tuple[Example, str]]) -> dict:
    start = time.perf_counter()
    results = worker.score(items)
    seconds = time.perf_counter() - start
    return {"items": len(items), "seconds": round(seconds, 3), "items_per_s": round(len(items) / seconds, 2),
            "mean_score": round(sum(r.score for r in results) / len(results), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=256, help="math, countdown and sudoku items each")
    parser.add_argument("--code-items", type=int, default=18, help="passing programs (3 test cases each)")
    parser.add_argument("--timeout-items", type=int, default=4, help="programs that loop forever")
    parser.add_argument("--wall", type=float, default=1.0, help="sandbox wall-clock limit per test case, s")
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    suites = {"math": math_items(args.items // 4), "countdown": countdown_items(args.items),
              "sudoku": sudoku_items(args.items), "code_pass": code_items(args.code_items, loop=False),
              "code_timeout": code_items(args.timeout_items, loop=True)}
    results: dict[str, dict] = {}
    for workers in (int(w) for w in args.workers.split(",")):
        config = RewardConfig(num_workers=workers, timeout_s=30.0, sandbox_wall_s=args.wall,
                              sandbox_cpu_s=max(args.wall, 1.0))
        with RewardWorker(config) as worker:
            # Untimed: wait until every worker is ready and has run each code path once (other
            # math answers, so the reference-parse cache stays cold for the timed items).
            worker.score(math_items(8 * workers, offset=5000) + suites["countdown"][:8] + suites["sudoku"][:8]
                         + suites["code_pass"][:workers])
            for name, items in suites.items():
                out = timed(worker, items)
                results.setdefault(name, {})[f"{workers}_workers"] = out
                print(f"{workers} worker(s) {name}: {out}", file=sys.stderr)
            stats = worker.stats()
            print(f"{workers} worker(s) stats: {stats}", file=sys.stderr)
    summary = {name: {k: v["items_per_s"] for k, v in by_workers.items()} for name, by_workers in results.items()}
    print(json.dumps({"bench": "rewards", "profile": "default", "cpus": os.cpu_count(), "sandbox_wall_s": args.wall,
                      "items_per_s": summary, "results": results}))


if __name__ == "__main__":
    main()
