"""``stabledrl report RUN_DIR``: the offline reward-collapse report of a run (system/monitoring/report.py).
``add_report_parser`` adds the subcommand to the main parser (system/cli.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_report_parser", "cmd_report"]


def cmd_report(args: argparse.Namespace) -> int:
    from system.monitoring.report import write_report

    print(json.dumps(write_report(Path(args.run_dir), Path(args.out) if args.out else None)))
    return 0


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="render RUN_DIR/report.png and a self-contained RUN_DIR/report.html from metrics.jsonl",
        description="Draw the reward-collapse dashboard (reward, ratio std and max, clip bypass, ESS, gradient "
        "norm with spikes, KL drift, collapse events) of a run from its metrics.jsonl, offline.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory holding metrics.jsonl")
    p.add_argument("--out", default=None, help="write the report files here instead of RUN_DIR")
    p.set_defaults(func=cmd_report)
    return p
